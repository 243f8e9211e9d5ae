"""(6) The embedded engine: first token and decode speed through hearthbot against
llama-cpp-python called directly.

Same GGUF file (the bundled SmolLM2-135M, or the configured embedded model's), same thread
count (the provider's), same context window, same messages, same sampling and the same token
limit. Both models are loaded and warmed first, so "first token" is with the model resident.
The runs alternate (hearthbot, direct, hearthbot, ...) so a change in the machine's load falls
on both alike; each run asks a different question after the same system prompt, as turns of
a conversation do, so llama.cpp's prompt cache helps both sides equally and no more.
Hearthbot's side is what a turn sees: the model host's stream (the residency gate, the
provider's worker thread and its hand-over to the event loop).
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from typing import Any

from bot.config import GenerationParams, parse_config
from bot.model_host import ModelHost
from bot.providers import ChatMessage, TextDelta
from bot.providers.base import StreamEnd
from bot.providers.embedded import EmbeddedProvider, weights_path
from tests.bench.common import Result, progress

SYSTEM = "You are a helpful assistant."
QUESTIONS = ("Tell me a short story about a lighthouse keeper.",
             "Describe a walk through a forest in autumn.",
             "Write a short letter to a friend about a trip to the sea.",
             "Explain how a bicycle works to a child.",
             "Tell me about a day in the life of a baker.",
             "Describe a thunderstorm over a small town.",
             "Write a short story about a lost cat finding its way home.",
             "Describe the view from the top of a mountain.")


async def _hearthbot(host: ModelHost, question: str, params: GenerationParams
                     ) -> tuple[float, float, int]:
    target = host.target(None)
    messages = (ChatMessage("system", SYSTEM), ChatMessage("user", question))
    started = time.perf_counter()
    first: float | None = None
    pieces, counted = 0, None
    async for delta in target.provider.stream(target.model, messages, params):
        if isinstance(delta, TextDelta) and delta.text:
            pieces += 1
            first = first or time.perf_counter()
        elif isinstance(delta, StreamEnd):
            counted = delta.completion_tokens
    ended = time.perf_counter()
    assert first is not None, "the model said nothing"
    tokens = counted or pieces
    return first - started, (tokens - 1) / (ended - first), tokens


def _direct(llm: Any, question: str, params: GenerationParams, max_tokens: int
            ) -> tuple[float, float, int]:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
    started = time.perf_counter()
    first: float | None = None
    produced = 0
    for chunk in llm.create_chat_completion(
            messages=messages, stream=True, temperature=params.temperature, top_p=params.top_p,
            repeat_penalty=params.repeat_penalty, max_tokens=max_tokens):
        if chunk["choices"][0]["delta"].get("content"):
            produced += 1
            first = first or time.perf_counter()
    ended = time.perf_counter()
    assert first is not None and produced > 1, "the model said nothing"
    return first - started, (produced - 1) / (ended - first), produced


async def run(quick: bool) -> Result:
    from llama_cpp import Llama

    runs, max_tokens = (2, 32) if quick else (16, 128)
    config = parse_config({"data_dir": tempfile.mkdtemp(prefix="hearthbot-bench-")})
    provider_name, spec, model = config.resolve_model(None)
    if spec.type != "embedded":
        raise SystemExit("the embedded benchmark needs the embedded model as the active one")
    path = weights_path(model)
    assert path is not None and path.suffix == ".gguf", f"not a GGUF file: {path}"
    threads = EmbeddedProvider(provider_name, spec).threads
    params = GenerationParams(max_tokens=max_tokens)
    host = ModelHost(config)
    progress("embedded: loading both")
    try:
        await host.start()
        llm = await asyncio.to_thread(Llama, model_path=str(path), n_ctx=model.context_window,
                                      n_threads=threads, n_threads_batch=threads,
                                      verbose=False)
        await _hearthbot(host, QUESTIONS[-1], params)  # warm-up on both sides
        await asyncio.to_thread(_direct, llm, QUESTIONS[-1], params, max_tokens)
        ours: list[tuple[float, float, int]] = []
        theirs: list[tuple[float, float, int]] = []
        for n in range(runs):
            question = QUESTIONS[n % (len(QUESTIONS) - 1)]
            progress(f"embedded: run {n + 1}/{runs}")
            ours.append(await _hearthbot(host, question, params))
            # In a thread, as the provider runs it: neither side blocks the loop differently.
            theirs.append(await asyncio.to_thread(_direct, llm, question, params, max_tokens))
        llm.close()
    finally:
        await host.close()

    def med(sample: list[tuple[float, float, int]], i: int) -> float:
        return statistics.median(s[i] for s in sample)

    figures = {
        "model_file": path.name, "threads": threads, "context_window": model.context_window,
        "max_tokens": max_tokens, "runs": runs,
        "hearthbot": {"first_token_ms": med(ours, 0) * 1000, "decode_tps": med(ours, 1),
                      "tokens": med(ours, 2)},
        "direct": {"first_token_ms": med(theirs, 0) * 1000, "decode_tps": med(theirs, 1),
                   "tokens": med(theirs, 2)},
    }
    figures["first_token_ratio"] = med(ours, 0) / med(theirs, 0)
    figures["decode_ratio"] = med(ours, 1) / med(theirs, 1)
    result = Result(
        "embedded",
        f"(6) embedded: {path.name}, {threads} thread(s), model resident, medians of {runs} "
        "alternating runs",
        ("path", "first token ms", "decode tok/s", "tokens"), figures=figures)
    for label, key in (("hearthbot (model host stream)", "hearthbot"),
                       ("llama-cpp-python directly", "direct")):
        f = figures[key]
        assert isinstance(f, dict)
        result.rows.append((label, f["first_token_ms"], f["decode_tps"], f["tokens"]))
    result.rows.append(("ratio hearthbot / direct", figures["first_token_ratio"],
                        figures["decode_ratio"], None))
    return result
