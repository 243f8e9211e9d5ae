"""`hearthbot bench`: the real command against fake backends. The figures are timings, so the
tests check what is reported and how (fields, types, where the progress goes), never how fast.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from tests.fakes.llm_backends import FakeOllama, FakeOpenAI
from tests.support.cli import hearthbot

FIELDS: dict[str, type | tuple[type, ...]] = {
    "model": str, "backend": str, "managed": bool, "cold_start_s": float,
    "cold_start_kind": str, "runs": int, "max_tokens": int, "first_token_s": float,
    "decode_tokens_per_s": (float, type(None)), "tokens_per_reply": (int, float),
    "backend_memory_mb": (float, type(None)), "backend_memory_source": str,
    "gateway_first_text_overhead_ms": float, "gateway_turn_overhead_ms": float,
    "samples": dict,
}


def _config(tmp_path: Path, provider: dict[str, object]) -> str:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({
        "gateway": {"port": 0, "providers": {"home": {
            **provider, "first_token_timeout": 10,
            "models": [{"id": "llama3.2:3b", "context_window": 8192}]}}},
        "agents": {"default": {"active_model": "home/llama3.2:3b"}}}))
    return str(path)


async def test_bench_json_against_ollama(tmp_path: Path, fake_ollama: FakeOllama,
                                         cli_env: dict[str, str], data_dir: Path) -> None:
    config = _config(tmp_path, {"type": "ollama", "base_url": fake_ollama.base_url})
    fake_ollama.loaded.append(fake_ollama.models[0])  # resident before: bench unloads first

    code, out, err = await hearthbot("--config", config, "bench", "--json", "--runs", "2",
                                     env=cli_env)

    assert code == 0, err
    report = json.loads(out)  # stdout is the one JSON object and nothing else
    assert set(report) == set(FIELDS)
    for name, kind in FIELDS.items():
        assert isinstance(report[name], kind), (name, report[name])
    assert report["model"] == "home/llama3.2:3b" and report["backend"] == "ollama"
    assert report["runs"] == 2 and not report["managed"]
    assert report["cold_start_kind"] == "load after unload"
    generates = [r.body for r in fake_ollama.requests_to("/api/generate")]
    assert generates[0] is not None and generates[0]["keep_alive"] == 0, "unloaded first"
    assert generates[1] is not None and generates[1]["keep_alive"] != 0, "then loaded"
    # The fake's /api/ps reports the model's size in bytes.
    assert report["backend_memory_mb"] == 2_019_393_189 / 1e6
    assert report["backend_memory_source"] == "Ollama /api/ps, of which 2019 MB in VRAM"
    assert report["tokens_per_reply"] == 3  # the fake's default reply: three pieces
    samples = report["samples"]
    assert len(samples["first_token_s"]) == 2
    assert len(samples["gateway_first_text_overhead_ms"]) == 2
    assert all(math.isfinite(x) for x in samples["gateway_turn_overhead_ms"])
    # Two direct requests, then two turns through the gateway; the turns carry the persona's
    # system prompt, the direct requests only the bench's own.
    bodies = fake_ollama.chat_bodies()
    assert len(bodies) == 4
    assert bodies[0]["messages"][0]["content"] == "You are a helpful assistant."
    assert bodies[2]["messages"][0]["content"] != "You are a helpful assistant."
    # Progress goes to stderr, step by step, and ends.
    assert "[" in err and "1/" in err and err.rstrip().endswith("done")
    # The turns were kept in a scratch store, not in the owner's data directory.
    assert not [p.name for p in data_dir.glob("*.db")]  # noqa: ASYNC240 (a test's check)


async def test_bench_table_against_an_openai_compatible_server(
        tmp_path: Path, cli_env: dict[str, str]) -> None:
    async with FakeOpenAI() as fake:
        config = _config(tmp_path, {"type": "openai-compat", "base_url": fake.base_url})
        code, out, err = await hearthbot("--config", config, "bench", env=cli_env)

    assert code == 0, err
    rows = dict(line.split("  ", 1) for line in out.splitlines())
    assert set(rows) >= {"model", "cold start", "time to first token", "decode",
                         "backend memory", "gateway, to first text", "gateway, whole turn"}
    assert "warm-up request" in rows["cold start"]
    assert rows["backend memory"].strip() == "not visible"
    assert rows["time to first token"].strip().endswith("(median of 3, up to 64 tokens each)")
    assert "done" in err and "done" not in out
    assert len(fake.chat_bodies()) == 6  # three direct requests and three turns
