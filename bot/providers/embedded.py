"""In-process models: llama.cpp (the bundled default, every OS) and mlx-lm (fast on Apple Silicon).

Inference is CPU- or GPU-bound and would freeze the event loop, so it runs in one dedicated worker
thread; tokens cross back to the loop through a queue as they are produced.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import AsyncGenerator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from bot.config import GenerationParams, ModelSpec, ProviderSpec
from bot.errors import ContextOverflow, ModelNotFound, ProviderError
from bot.providers.base import (
    ChatMessage,
    Delta,
    StreamEnd,
    TextDelta,
    ToolSpec,
    offered_tools,
    output_cap,
    thinking_switch,
)
from bot.providers.bundled import bundled_model_path
from bot.providers.toolcalls import ToolOfferingProvider, function_schema

log = logging.getLogger(__name__)

Emit = Callable[[str], None]


@dataclass(frozen=True)
class Generated:
    finish_reason: str
    prompt_tokens: int | None
    completion_tokens: int


class Engine(Protocol):
    def generate(self, messages: Sequence[ChatMessage], params: GenerationParams,
                 max_tokens: int, emit: Emit, cancelled: threading.Event,
                 tools: Sequence[ToolSpec] = ()) -> Generated: ...

    def count_tokens(self, messages: Sequence[ChatMessage],
                     tools: Sequence[ToolSpec] = ()) -> int:
        """The prompt's length in the model's tokens, rendered as `generate` renders it."""
        ...

    def close(self) -> None:
        """Release the weights; called on the thread that ran the model."""


class LlamaCppEngine:
    def __init__(self, path: Path, context_window: int, threads: int) -> None:
        from llama_cpp import Llama

        self.llm = Llama(model_path=str(path), n_ctx=context_window, n_threads=threads,
                         n_threads_batch=threads, verbose=False)
        self._formatter = _template_formatter(self.llm)

    def close(self) -> None:
        self.llm.close()

    def count_tokens(self, messages: Sequence[ChatMessage],
                     tools: Sequence[ToolSpec] = ()) -> int:
        wire: Any = [template_message(m) for m in messages]
        if self._formatter is None:
            # A built-in chat format (no template in the file): the contents counted exactly,
            # the role markers generously.
            return sum(len(self.llm.tokenize(str(m["content"]).encode(), add_bos=False,
                                             special=False)) + 8 for m in wire) + 8
        offered: Any = {"tools": [function_schema(t) for t in tools],
                        "tool_choice": "auto"} if tools else {}
        # What llama.cpp's chat handler does before generating: render, then tokenize.
        rendered = self._formatter(messages=wire, **offered)
        return len(self.llm.tokenize(rendered.prompt.encode(), add_bos=not rendered.added_special,
                                     special=True))

    def generate(self, messages: Sequence[ChatMessage], params: GenerationParams,
                 max_tokens: int, emit: Emit, cancelled: threading.Event,
                 tools: Sequence[ToolSpec] = ()) -> Generated:
        wire: Any = [template_message(m) for m in messages]
        # With tool_choice "auto", llama.cpp only hands the schemas to the GGUF's chat template
        # (Qwen, Hermes and Llama 3.1 templates describe them to the model; others, like the
        # bundled SmolLM2's, ignore them) and returns plain text; calls written as text are
        # recovered by the provider.
        offered: Any = {"tools": [function_schema(t) for t in tools],
                        "tool_choice": "auto"} if tools else {}
        try:
            chunks: Any = self.llm.create_chat_completion(
                messages=wire,
                stream=True, temperature=params.temperature, top_p=params.top_p,
                repeat_penalty=params.repeat_penalty, max_tokens=max_tokens, **offered,
            )
            produced, finish_reason = 0, "stop"
            for chunk in chunks:
                if cancelled.is_set():
                    finish_reason = "cancelled"
                    break
                choice = chunk["choices"][0]
                if text := choice["delta"].get("content"):
                    produced += 1
                    emit(text)
                finish_reason = choice.get("finish_reason") or finish_reason
        except ValueError as exc:
            if "exceed context window" in str(exc):
                raise ContextOverflow(str(exc)) from exc
            raise
        # llama.cpp keeps the evaluated tokens: what was not generated was prompt.
        return Generated(finish_reason, max(self.llm.n_tokens - produced, 0), produced)


class MlxEngine:
    def __init__(self, reference: str) -> None:
        try:
            from mlx_lm import load
        except ImportError as exc:
            raise ModelNotFound("this model needs mlx-lm; install hearthbot with the `mlx` "
                                "extra (`pip install -e '.[mlx]'`)") from exc
        # Held as Any: mlx-lm's methods are mostly unannotated. load() is annotated to return
        # the config as well, which it does only when asked (return_config=True).
        self.model: Any
        self.tokenizer: Any
        self.model, self.tokenizer = load(reference)[:2]

    def count_tokens(self, messages: Sequence[ChatMessage],
                     tools: Sequence[ToolSpec] = ()) -> int:
        prompt = self.tokenizer.apply_chat_template(
            [template_message(m) for m in messages],
            tools=[function_schema(t) for t in tools] or None,
            add_generation_prompt=True,
        )
        return len(prompt)

    def close(self) -> None:
        import mlx.core as mx

        # MLX keeps per-thread stream state; a worker thread that exits with it still set
        # aborts the process on exit ("terminate called without an active exception").
        self.model = self.tokenizer = None
        mx.clear_streams()

    def generate(self, messages: Sequence[ChatMessage], params: GenerationParams,
                 max_tokens: int, emit: Emit, cancelled: threading.Event,
                 tools: Sequence[ToolSpec] = ()) -> Generated:
        from contextlib import closing

        from mlx_lm import stream_generate
        from mlx_lm.sample_utils import make_logits_processors, make_sampler

        # The Hugging Face template renders the schemas when it knows how (like llama.cpp's),
        # and reads `enable_thinking` where the model can switch its thinking (Qwen3, SmolLM3).
        switch = {} if params.think is None else {"enable_thinking": params.think}
        prompt = self.tokenizer.apply_chat_template(
            [template_message(m) for m in messages],
            tools=[function_schema(t) for t in tools] or None,
            add_generation_prompt=True, **switch,
        )
        last: Any = None
        finish_reason = "stop"
        # Closed explicitly when stopping early: the generator keeps the next token in flight and,
        # on Apple GPUs, waits for it and restores the wired-memory limit on exit. That must happen
        # here, on the model's thread and before the turn ends, not whenever (and on whichever
        # thread) the abandoned generator is garbage-collected.
        with closing(stream_generate(
            self.model, self.tokenizer, prompt, max_tokens=max_tokens,
            sampler=make_sampler(temp=params.temperature, top_p=params.top_p),
            logits_processors=make_logits_processors(repetition_penalty=params.repeat_penalty),
        )) as responses:
            for last in responses:
                if cancelled.is_set():
                    finish_reason = "cancelled"
                    break
                if last.text:
                    emit(last.text)
                finish_reason = last.finish_reason or finish_reason
        if last is None:
            return Generated(finish_reason, None, 0)
        return Generated(finish_reason, last.prompt_tokens, last.generation_tokens)


def _template_formatter(llm: Any) -> Any:
    """The Jinja formatter llama.cpp renders this model's chats with, when the GGUF carries
    the template it uses (llama.cpp keeps only a handler that renders and generates at once)."""
    if llm.chat_handler is not None or not str(llm.chat_format).startswith("chat_template."):
        return None
    name = str(llm.chat_format)
    template = llm.metadata.get("tokenizer.chat_template" if name == "chat_template.default"
                                else f"tokenizer.{name}")
    if not template:
        return None
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    def token(token_id: int) -> str:
        return str(llm._model.token_get_text(token_id)) if token_id != -1 else ""

    return Jinja2ChatFormatter(template=template, eos_token=token(llm.token_eos()),
                               bos_token=token(llm.token_bos()))


def template_message(message: ChatMessage) -> dict[str, object]:
    """A history message as chat templates (Hugging Face's convention, which llama.cpp follows)
    read it: call arguments as an object, a result with its call id and tool name."""
    out: dict[str, object] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        out["tool_calls"] = [{"id": c.id, "type": "function",
                              "function": {"name": c.name, "arguments": c.arguments}}
                             for c in message.tool_calls]
    if message.role == "tool":
        out["tool_call_id"] = message.tool_call_id
        if message.tool_name:
            out["name"] = message.tool_name
    return out


def default_threads() -> int:
    """The engine's thread count when the config gives none (see tests/bench/bench_threads.py).

    llama.cpp's threads spin while they wait for each other, so one that shares its core with
    another busy process stalls every token: on 2 cores with other work running, 2 threads
    decoded at a fraction of 1 thread's speed. Half the cores leaves room for the rest of the
    service (speech, the event loop) and for whatever else the machine runs.
    """
    return max(1, (os.cpu_count() or 1) // 2)


def weights_path(model: ModelSpec) -> Path | None:
    """Where an embedded model's weights are on disk; None for a hub id not yet downloaded."""
    if model.path is None:
        return bundled_model_path()
    local = Path(model.path).expanduser()
    return local if local.exists() else None


def open_engine(model: ModelSpec, threads: int) -> Engine:
    """Load a model's weights; this is slow and must run off the event loop."""
    if model.path is None:
        return LlamaCppEngine(bundled_model_path(), model.context_window, threads)
    engine = model.engine or ("llama-cpp" if model.path.endswith(".gguf") else "mlx")
    if engine == "llama-cpp":
        path = Path(model.path).expanduser()
        if not path.is_file():
            raise ModelNotFound(f"model file {path} does not exist")
        return LlamaCppEngine(path, model.context_window, threads)
    local = Path(model.path).expanduser()
    # A folder on disk, or a hub id that mlx-lm downloads on a machine with internet.
    return MlxEngine(str(local) if local.exists() else model.path)


def _one_token(engine: Engine) -> None:
    engine.generate([ChatMessage("user", "Hi")], GenerationParams(), 1, lambda _: None,
                    threading.Event())


class _Finished:
    def __init__(self, result: Generated) -> None:
        self.result = result


class EmbeddedProvider(ToolOfferingProvider):
    """Holds at most one model resident; loading another releases the previous one first."""

    def __init__(self, name: str, spec: ProviderSpec) -> None:
        self.name = name
        self.threads = spec.threads or default_threads()
        self._resident: tuple[str, Engine] | None = None
        self._load_lock = asyncio.Lock()
        # One reply at a time: a loaded model is not re-entrant, and two decodes would only
        # split the same cores and memory bandwidth.
        self._turn_lock = asyncio.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"model-{name}")

    async def _engine(self, model: ModelSpec) -> Engine:
        async with self._load_lock:
            if self._resident is not None and self._resident[0] == model.id:
                return self._resident[1]
            # Drop the old weights before the new ones need the memory.
            await self._release()
            loop = asyncio.get_running_loop()
            try:
                engine = await loop.run_in_executor(self._executor, open_engine, model,
                                                    self.threads)
            except ProviderError:
                raise
            except Exception as exc:
                raise ModelNotFound(f"{self.name}: cannot load {model.id}: {exc}") from exc
            self._resident = (model.id, engine)
            return engine

    async def warm(self, model: ModelSpec) -> None:
        """Load the weights and run one token, so the first reply pays for neither."""
        async with self._turn_lock:
            engine = await self._engine(model)
            await asyncio.get_running_loop().run_in_executor(self._executor, _one_token, engine)

    async def ping(self) -> None:
        """In-process: there is no server to wait for."""

    async def loaded_models(self) -> list[str] | None:
        return [self._resident[0]] if self._resident is not None else []

    async def model_size(self, model: ModelSpec) -> int | None:
        from bot.memory_fit import weights_bytes

        path = weights_path(model)
        return weights_bytes(path) if path is not None else None

    async def count_tokens(self, model: ModelSpec, messages: Sequence[ChatMessage],
                           tools: Sequence[ToolSpec] = ()) -> int | None:
        offered = offered_tools(model, tools)
        # Counted on the loop's thread while a reply may be decoding on the model's: the
        # tokenizer only reads the vocabulary. Under the load lock, so the weights cannot be
        # released meanwhile; a model that is not resident is not loaded just to count.
        async with self._load_lock:
            if self._resident is None or self._resident[0] != model.id:
                return None
            return self._resident[1].count_tokens(messages, offered)

    async def unload(self, model: ModelSpec) -> None:
        async with self._load_lock:
            if self._resident is not None and self._resident[0] == model.id:
                await self._release()

    async def _release(self) -> None:
        if self._resident is None:
            return
        engine, self._resident = self._resident[1], None
        await asyncio.get_running_loop().run_in_executor(self._executor, engine.close)

    async def generate(
        self,
        model: ModelSpec,
        messages: Sequence[ChatMessage],
        params: GenerationParams,
        tools: Sequence[ToolSpec],
    ) -> AsyncGenerator[Delta, None]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[str | _Finished | BaseException] = asyncio.Queue()
        # The engine sees the thinking switch only for a model marked `reasoning`. mlx-lm hands
        # it to the chat template; llama.cpp's chat handler takes no template variables, so
        # there the model's template decides.
        asked = replace(params, think=thinking_switch(model, params))
        cancelled = threading.Event()

        def hand_over(item: str | _Finished | BaseException) -> None:
            if not loop.is_closed():
                loop.call_soon_threadsafe(queue.put_nowait, item)

        # Text made but not yet taken by the loop. Waking the loop costs a system call and a
        # turn of the GIL: once per batch, not once per token, so the decode thread keeps
        # the interpreter while the loop is busy; tokens made meanwhile join the batch.
        made: list[str] = []
        made_lock = threading.Lock()

        def take_made() -> None:
            with made_lock:
                text = "".join(made)
                made.clear()
            queue.put_nowait(text)

        def emit(text: str) -> None:
            with made_lock:
                made.append(text)
                if len(made) > 1:  # a wake-up is on its way and will take this one too
                    return
            if not loop.is_closed():
                loop.call_soon_threadsafe(take_made)

        def work() -> None:
            try:
                hand_over(_Finished(engine.generate(
                    messages, asked, output_cap(model, params), emit, cancelled, tools,
                )))
            except BaseException as exc:  # the consumer re-raises it on the loop
                hand_over(exc)

        async with self._turn_lock:
            # Taken under the turn lock: a turn for another model may not swap the weights
            # out between choosing the engine and using it.
            engine = await self._engine(model)
            job = loop.run_in_executor(self._executor, work)
            try:
                while True:
                    item = await queue.get()
                    if isinstance(item, str):
                        yield TextDelta(item)
                    elif isinstance(item, _Finished):
                        yield StreamEnd(item.result.finish_reason, item.result.prompt_tokens,
                                        item.result.completion_tokens)
                        return
                    elif isinstance(item, ProviderError):
                        raise item
                    else:
                        raise ProviderError(f"{self.name}: generation failed: {item!r}") from item
            finally:
                # A reader that stops early (user gone, error downstream) stops the decode too;
                # the lock is held until the thread has really let go of the model.
                cancelled.set()
                await asyncio.wait([job])

    async def close(self) -> None:
        async with self._turn_lock, self._load_lock:
            await self._release()
        self._executor.shutdown(wait=True)
