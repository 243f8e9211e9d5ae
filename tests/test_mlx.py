"""The MLX engine, really run on the CPU: the bundled GGUF converted offline to an mlx-lm folder.

mlx is imported unconditionally: where it is missing these tests must fail, not skip, since
nothing else exercises the engine Apple Silicon users get.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from llama_cpp import Llama

from bot.config import GenerationParams, ModelSpec, ProviderSpec
from bot.providers import ChatMessage, StreamEnd, TextDelta
from bot.providers.bundled import bundled_model_path
from bot.providers.embedded import EmbeddedProvider, MlxEngine
from tests.support.mlx_convert import convert_gguf_to_mlx

QUESTION = (ChatMessage("system", "You are a helpful assistant."),
            ChatMessage("user", "Name three colours."))


@pytest.fixture(scope="module")
def mlx_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return convert_gguf_to_mlx(bundled_model_path(), tmp_path_factory.mktemp("smollm2-mlx"))


@pytest.fixture
def model(mlx_folder: Path) -> ModelSpec:
    return ModelSpec(id="smollm2-mlx", path=str(mlx_folder), engine="mlx", max_tokens=24)


@pytest.fixture
async def provider(model: ModelSpec) -> AsyncIterator[EmbeddedProvider]:
    provider = EmbeddedProvider("local", ProviderSpec(type="embedded", models=(model,)))
    yield provider
    await provider.close()


async def test_mlx_model_streams_a_reply(provider: EmbeddedProvider, model: ModelSpec) -> None:
    mx.random.seed(0)  # the default params sample; a fixed seed keeps the reply reproducible
    deltas = [d async for d in provider.stream(model, QUESTION, GenerationParams())]
    texts = [d.text for d in deltas if isinstance(d, TextDelta)]
    end = deltas[-1]
    assert len(texts) > 3, "expected the reply in several pieces, as it is produced"
    assert "".join(texts).strip()
    assert isinstance(end, StreamEnd)
    assert end.finish_reason in ("stop", "length")
    assert end.prompt_tokens is not None and 10 < end.prompt_tokens < 100
    assert end.completion_tokens is not None
    # mlx-lm counts every token decoded, the end-of-turn one included, and a token can hold
    # only part of a character, so there are at least as many tokens as pieces of text.
    assert len(texts) <= end.completion_tokens <= model.max_tokens
    if end.finish_reason == "length":
        assert end.completion_tokens == model.max_tokens


async def test_stopping_early_frees_the_mlx_model_for_the_next_reply(
        provider: EmbeddedProvider, model: ModelSpec) -> None:
    stream: AsyncIterator[object] = provider.stream(model, QUESTION, GenerationParams())
    async for _ in stream:
        break
    await stream.aclose()  # type: ignore[attr-defined]
    deltas = await asyncio.wait_for(
        _collect(provider.stream(model, QUESTION, GenerationParams(max_tokens=4))), timeout=60)
    end = deltas[-1]
    assert isinstance(end, StreamEnd)
    assert end.completion_tokens is not None and end.completion_tokens <= 4


def test_converted_model_reads_text_as_llama_cpp_does(mlx_folder: Path) -> None:
    """Both engines read the same tokens; their next-token predictions must agree.

    Free-running greedy replies are not compared: llama.cpp rounds activations to 8 bits for its
    quantised matrix products and MLX does not, and this tiny model's first reply token is nearly
    a tie, so the two can part ways at any token while both being right. Reading a fixed text
    ("teacher forcing") compares every position instead. Measured: the top token agrees at every
    position and the logits correlate at 0.999; with the q/k rows left in llama.cpp's order, the
    top token agrees at about half the positions and the correlation drops to about 0.8.
    """
    engine = MlxEngine(str(mlx_folder))
    chat = [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is the capital of France?"}]
    text = engine.tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    text += "The capital of France is Paris."

    llm = Llama(model_path=str(bundled_model_path()), n_ctx=256, n_threads=2, logits_all=True,
                verbose=False)
    ids = llm.tokenize(text.encode(), add_bos=False, special=True)
    # The converted tokenizer and chat template must give llama.cpp's tokens exactly.
    assert engine.tokenizer.encode(text, add_special_tokens=False) == ids

    llm.eval(ids)
    expected = np.asarray(llm.scores[: len(ids)], dtype=np.float32)
    got = np.asarray(engine.model(mx.array([ids]))[0].astype(mx.float32))

    same_top = float(np.mean(got.argmax(-1) == expected.argmax(-1)))
    correlation = float(np.mean([np.corrcoef(g, e)[0, 1] for g, e in zip(got, expected,
                                                                          strict=True)]))
    assert same_top >= 0.9, f"top token agrees at only {same_top:.0%} of positions"
    assert correlation > 0.99, f"logits correlate at only {correlation:.3f}"
    # Having read "The capital of France is", the MLX model's next token is " Paris".
    [paris] = engine.tokenizer.encode(" Paris", add_special_tokens=False)
    before_paris = len(ids) - 1 - ids[::-1].index(paris) - 1
    assert int(got[before_paris].argmax()) == paris


async def _collect(stream: AsyncIterator[object]) -> list[object]:
    return [item async for item in stream]


async def test_the_thinking_switch_reaches_the_chat_template(mlx_folder: Path,
                                                             tmp_path: Path) -> None:
    # A template that, like Qwen3's, writes an empty thought into the prompt when thinking is
    # off: the prompt then grows by those tokens, which the engine reports. (Left unasked,
    # mlx-lm turns thinking on only for a vocabulary with <think> tokens; SmolLM2 has none.)
    folder = tmp_path / "switchable"
    shutil.copytree(mlx_folder, folder)
    _append_to_template(folder, "{%- if enable_thinking is defined and not enable_thinking %}"
                                "<think>\n\n</think>\n\n{%- endif %}")
    model = ModelSpec(id="switchable", path=str(folder), engine="mlx", max_tokens=1,
                      reasoning=True)
    local = EmbeddedProvider("local", ProviderSpec(type="embedded", models=(model,)))

    async def prompt_tokens(spec: ModelSpec, think: bool | None) -> int:
        deltas = await _collect(local.stream(spec, QUESTION, GenerationParams(think=think)))
        end = deltas[-1]
        assert isinstance(end, StreamEnd) and end.prompt_tokens is not None
        return end.prompt_tokens

    try:
        on, off, default = [await prompt_tokens(model, think) for think in (True, False, None)]
        plain = await prompt_tokens(replace(model, reasoning=False), True)
    finally:
        await local.close()
    assert off > on, "thinking off writes the empty thought into the prompt"
    assert default == off, "left unasked, the model's own default holds"
    assert plain == default, "a model not marked reasoning is not told"


def _append_to_template(folder: Path, tail: str) -> None:
    jinja = folder / "chat_template.jinja"
    if jinja.exists():
        jinja.write_text(jinja.read_text() + tail)
        return
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] += tail
    config_path.write_text(json.dumps(config))
