"""`hearthbot bench`: how the configured model backend performs on this machine, and what
hearthbot itself adds to a turn. It measures; it does not judge.

Figures, for the active model:
- cold start: making the model resident. Embedded: loading the weights into this process;
  managed: starting the server and loading; Ollama: loading after asking it to unload; another
  OpenAI-compatible server keeps its model loaded, so only the warm-up request is timed.
- time to first token and decode speed: a few direct requests to the backend, medians.
- the backend's memory where it can be seen: this process's growth for an embedded model, the
  managed server's resident memory, or what Ollama's /api/ps reports.
- the gateway's own time per turn: the same kind of request sent as a chat message through
  the gateway (inbox, routing, history, prompt, delivery, record) into an in-memory chat; the
  backend stream's own time inside that turn is taken off, before the first text and in all.

The turns go to a throw-away data directory, so the owner's history is not touched. Progress
goes to stderr; the table (or, with --json, one JSON object) to stdout.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from bot.config import Config, GenerationParams
from bot.errors import ProviderError
from bot.events import ChatKind, InboundEvent, ReplyPart, ReplyText
from bot.model_host import ModelHost
from bot.providers import ChatMessage, TextDelta
from bot.providers.base import StreamEnd

if TYPE_CHECKING:
    from bot.gateway import Gateway

PROMPT = "Tell me a short story about a lighthouse keeper."
SYSTEM = "You are a helpful assistant."
MAX_TOKENS = 64
CHAT = "bench"  # the in-memory chat's id and sender: bound to nothing, so the guest persona


@dataclass(frozen=True)
class BenchReport:
    model: str
    backend: str  # the provider type: embedded, ollama, openai-compat
    managed: bool
    cold_start_s: float
    cold_start_kind: str
    runs: int
    max_tokens: int
    first_token_s: float  # medians over the runs
    decode_tokens_per_s: float | None  # None when a reply had under two tokens
    tokens_per_reply: float
    backend_memory_mb: float | None
    backend_memory_source: str
    gateway_first_text_overhead_ms: float
    gateway_turn_overhead_ms: float
    samples: dict[str, list[float]] = field(default_factory=dict)


class Progress:
    """A plain-text bar on one stream: redrawn in place on a terminal, one line per step
    elsewhere (a log, a pipe)."""

    def __init__(self, total: int, out: TextIO = sys.stderr, width: int = 24) -> None:
        self.total, self.done, self.out, self.width = total, 0, out, width
        self.live = out.isatty()

    def step(self, what: str) -> None:
        filled = self.width * self.done // max(self.total, 1)
        bar = "#" * filled + "-" * (self.width - filled)
        line = f"[{bar}] {self.done}/{self.total} {what}"
        self.out.write(f"\r{line:<78}" if self.live else line + "\n")
        self.out.flush()
        self.done += 1

    def finish(self) -> None:
        self.done = self.total
        self.step("done")
        if self.live:
            self.out.write("\n")
            self.out.flush()


def _rss_kb(pid: int | str = "self") -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


async def _ollama_memory(base_url: str, model_id: str) -> tuple[float, float] | None:
    """What Ollama's /api/ps says the loaded model takes, in MB: in all, and in VRAM."""
    import httpx

    from bot.providers.ollama import same_model

    try:
        async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
            answer = (await client.get("/api/ps")).json()
    except (httpx.HTTPError, ValueError):  # an older Ollama, or a proxy: not visible
        return None
    if not isinstance(answer, dict):
        return None
    for entry in answer.get("models") or []:
        if isinstance(entry, dict) and same_model(str(entry.get("name") or entry.get("model")),
                                                  model_id):
            size, vram = entry.get("size"), entry.get("size_vram")
            if isinstance(size, int) and size > 0:
                return size / 1e6, (vram / 1e6 if isinstance(vram, int) else 0.0)
    return None


async def _direct(host: ModelHost, label: str,
                  params: GenerationParams) -> tuple[float, float | None, int]:
    """One request straight to the backend: (seconds to first token, decode tokens/s, tokens)."""
    provider, spec = host.backend(label)
    messages = (ChatMessage("system", SYSTEM), ChatMessage("user", PROMPT))
    started = time.perf_counter()
    first: float | None = None
    pieces, counted = 0, None
    async for delta in provider.stream(spec, messages, params):
        if isinstance(delta, TextDelta) and delta.text:
            pieces += 1
            if first is None:
                first = time.perf_counter()
        elif isinstance(delta, StreamEnd):
            counted = delta.completion_tokens
    ended = time.perf_counter()
    if first is None:
        first = ended
    tokens = counted or pieces
    decoding = ended - first
    speed = (tokens - 1) / decoding if tokens > 1 and decoding > 0 else None
    return first - started, speed, tokens


def _event(n: int) -> InboundEvent:
    return InboundEvent(platform="console", chat_id=CHAT, chat_kind=ChatKind.DM,
                        sender_id=CHAT, sender_name=CHAT, message_id=f"bench-{n}-{time.time_ns()}",
                        text=PROMPT)


async def measure(config: Config, runs: int, progress: Progress,
                  max_tokens: int = MAX_TOKENS) -> BenchReport:
    from bot.service import open_service

    with tempfile.TemporaryDirectory(prefix="hearthbot-bench-") as scratch:
        async with open_service(replace(config, data_dir=scratch), voice=False) as service:
            return await _measure(service.models, service.gateway, config, runs, progress,
                                  max_tokens)


async def _measure(host: ModelHost, gateway: Gateway, config: Config, runs: int,
                   progress: Progress, max_tokens: int) -> BenchReport:
    label = host.label(None)
    _, spec, model = config.resolve_model(None)
    provider, _ = host.backend(label)
    managed = spec.managed is not None
    kind = ("load into this process" if spec.type == "embedded"
            else "server start and load" if managed
            else "load after unload" if spec.type == "ollama"
            else "warm-up request (the server keeps its model loaded)")
    progress.step(f"cold start: {label}")
    if spec.type == "ollama" and not managed:
        try:
            await provider.unload(model)
        except ProviderError:
            # Not up yet (start() waits for it) or it refused: the load is all there is to time.
            kind = "load (it could not be asked to unload first)"
    rss_before = _rss_kb()
    cold = await host.start()

    params = GenerationParams(max_tokens=max_tokens)
    firsts: list[float] = []
    speeds: list[float] = []
    tokens: list[float] = []
    for n in range(runs):
        progress.step(f"direct request {n + 1}/{runs}")
        first, speed, count = await _direct(host, label, params)
        firsts.append(first)
        tokens.append(count)
        if speed is not None:
            speeds.append(speed)

    progress.step("backend memory")
    memory, source = None, "not visible for this backend"
    if spec.type == "embedded":
        after = _rss_kb()
        if rss_before is not None and after is not None:
            memory = (after - rss_before) / 1024
            source = "this process's growth since before loading"
    elif managed:
        servers = [s for s in host.status().managed if s.pid is not None]
        rss = _rss_kb(servers[0].pid) if servers and servers[0].pid else None
        if rss is not None:
            memory, source = rss / 1024, "the managed server's resident memory"
    elif spec.type == "ollama" and spec.base_url:
        reported = await _ollama_memory(spec.base_url, model.id)
        if reported is not None:
            memory, vram = reported
            source = f"Ollama /api/ps, of which {vram:.0f} MB in VRAM"

    first_overhead: list[float] = []
    turn_overhead: list[float] = []
    for n in range(runs):
        progress.step(f"turn through the gateway {n + 1}/{runs}")
        event = _event(n)
        await gateway.start_over(event)  # each turn alone, as the direct requests are
        shown: list[float] = []

        async def deliver(event: InboundEvent, reply: AsyncIterator[ReplyPart],
                          shown: list[float] = shown) -> None:
            async for part in reply:
                if isinstance(part, ReplyText) and part.text and not shown:
                    shown.append(time.perf_counter())

        started = time.perf_counter()
        await gateway.handle(event, deliver)
        ended = time.perf_counter()
        backend = host.status().last_turn
        if backend is None or backend.first_token_seconds is None or not shown:
            continue
        first_overhead.append((shown[0] - started - backend.first_token_seconds) * 1000)
        turn_overhead.append((ended - started - backend.total_seconds) * 1000)
    progress.finish()

    def median(values: list[float]) -> float:
        return statistics.median(values) if values else float("nan")

    return BenchReport(
        model=label, backend=spec.type, managed=managed, cold_start_s=cold,
        cold_start_kind=kind, runs=runs, max_tokens=max_tokens, first_token_s=median(firsts),
        decode_tokens_per_s=statistics.median(speeds) if speeds else None,
        tokens_per_reply=median(tokens), backend_memory_mb=memory,
        backend_memory_source=source,
        gateway_first_text_overhead_ms=median(first_overhead),
        gateway_turn_overhead_ms=median(turn_overhead),
        samples={"first_token_s": firsts, "decode_tokens_per_s": speeds,
                 "gateway_first_text_overhead_ms": first_overhead,
                 "gateway_turn_overhead_ms": turn_overhead})


def table(report: BenchReport) -> str:
    def number(value: float | None, unit: str, digits: int = 2) -> str:
        return "not visible" if value is None else f"{value:.{digits}f} {unit}"

    rows = [
        ("model", f"{report.model} ({report.backend}{', managed' if report.managed else ''})"),
        ("cold start", f"{report.cold_start_s:.2f} s ({report.cold_start_kind})"),
        ("time to first token", f"{report.first_token_s * 1000:.0f} ms (median of "
                                f"{report.runs}, up to {report.max_tokens} tokens each)"),
        ("decode", number(report.decode_tokens_per_s, "tokens/s", 1)),
        ("backend memory", number(report.backend_memory_mb, "MB", 0)
         + (f" ({report.backend_memory_source})" if report.backend_memory_mb is not None
            else "")),
        ("gateway, to first text", f"{report.gateway_first_text_overhead_ms:.1f} ms per turn"),
        ("gateway, whole turn", f"{report.gateway_turn_overhead_ms:.1f} ms per turn"),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


async def run_bench(config: Config, runs: int, as_json: bool,
                    out: Callable[[str], None] = print) -> int:
    progress = Progress(total=2 + 2 * runs)
    report = await measure(config, runs, progress)
    out(json.dumps(asdict(report)) if as_json else table(report))
    return 0
