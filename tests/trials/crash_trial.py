"""Crash trial: kill the real `hearthbot run` mid-turn, restart it, and count what users saw.

    python -m tests.trials.crash_trial [--quick] [--trials N] [--platform telegram|discord|both]
                                       [--seed S] [--repo PATH] [--json FILE]

The fake Telegram or Discord and a slow fake Ollama run in this process; the service runs as a
child with a config pointing at them (Discord through tests/trials/discord_runner.py). Each
trial sends one message in a chat of its own (a DM, or a group where the bot is mentioned),
signals the service during the turn, starts it again, waits until the chat has settled, and
then looks at the chat as a user would:

- lost: no message of the bot carries the whole reply;
- doubled: two or more do;
- truncated-left: a bot message whose final text is a strict prefix of the reply is still
  there (not deleted) beside another bot message;
- other: bot messages that are neither (an apology, a failure sentence).

Per platform: `--trials` kill -9 trials (every fourth one in the send→record window) and half
as many SIGTERM trials (every fifth in that window). A window trial watches the fake for the
final send (the first that carries the whole reply) and signals the service from inside the
fake's request handler, before the service hears that the send succeeded: what kill -9 doubles
there is the at-least-once remainder. The window's width is measured on undisturbed turns:
from the final send arriving at the fake to the turn's row appearing in the SQLite `turns`
table (polled every millisecond).

The random moments come from `--seed`; the processes' own timing does not, so two runs with
one seed ask the same questions and may get slightly different answers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tests.fakes.discord import FakeDiscord
from tests.fakes.llm_backends import FakeOllama, ScriptedReply
from tests.fakes.telegram import FakeTelegram
from tests.trials.harness import (
    MODEL,
    OWN_CHECKOUT,
    SETTLED_STATES,
    Database,
    Json,
    ServiceProcess,
    code_under_test,
    install_cleanup,
    percentile,
    service_config,
)

PROMPT = "Tell me a short story about the hearth."
STORY = ("Once upon a time a small fire lived in a stone hearth at the edge of a quiet village "
         "and every evening the people came to sit beside it and tell the stories of their day "
         "while the fire listened and grew warm and bright until the last of them went home "
         "to sleep.")
WORDS = STORY.split(" ")
# About two seconds of streaming: long enough for several edits, and for a kill to land inside.
REPLY = ScriptedReply(chunks=(*(f"{w} " for w in WORDS[:-1]), WORDS[-1]),
                      first_token_delay=0.2, token_delay=0.04)
FULL = "".join(REPLY.chunks).strip()
EDIT_INTERVAL = 0.3  # seconds between progress edits: several per reply
DISCORD_TOKEN = "MTAwMDAwMDAwMDAwMDAwMDAx.hearth-trial.s3cret-t0ken-value"

SIGNALS = {"kill -9": signal.SIGKILL, "SIGTERM": signal.SIGTERM}
QUIET = 1.0  # a chat has settled when nothing touched it for this long
NEVER_STORED_AFTER = 8.0  # seconds after a restart without an inbox row: the message is gone
SETTLE_LIMIT = 30.0
SIGTERM_LIMIT = 20.0  # a SIGTERM not obeyed by then counts as hung and is followed by kill -9

# The watching fakes report every text the bot shows: the chat, the text, and whether it is the
# whole reply. The first send that carries the whole reply is the final send: from then on the
# person has the answer and only the record is missing. (A service may still re-send the same
# text with formatting; that edit falls inside the window.)
OnText = Callable[[str, str, bool], None]


class WatchedTelegram(FakeTelegram):
    """FakeTelegram that tells the trial about every text the bot puts into a chat."""

    on_text: OnText | None = None

    async def _send_message(self, params: Json, files: dict[str, bytes]) -> Json:
        message = await super()._send_message(params, files)
        self._seen(params, message)
        return message

    async def _edit_message_text(self, params: Json, files: dict[str, bytes]) -> Json:
        message = await super()._edit_message_text(params, files)
        self._seen(params, message)
        return message

    def _seen(self, params: Json, message: Json) -> None:
        if self.on_text is not None:
            text = str(message.get("text", ""))
            self.on_text(str(message["chat"]["id"]), text, text.strip() == FULL)


class WatchedDiscord(FakeDiscord):
    """FakeDiscord that tells the trial about every text the bot creates or edits."""

    on_text: OnText | None = None

    def _create_message(self, cid: int, body: Json, files: dict[str, bytes]) -> tuple[int, Any]:
        status, payload = super()._create_message(cid, body, files)
        self._seen(cid, status, payload)
        return status, payload

    def _edit_message(self, cid: int, msg: Json, body: Json) -> tuple[int, Any]:
        status, payload = super()._edit_message(cid, msg, body)
        self._seen(cid, status, payload)
        return status, payload

    def _seen(self, cid: int, status: int, payload: Any) -> None:
        if self.on_text is not None and status == 200:
            text = str(payload.get("content") or "")
            self.on_text(str(cid), text, text.strip() == FULL)


@dataclass
class Sent:
    chat: str  # the inbox's chat_id
    message_id: str


class Platform:
    name = ""
    ready_pattern = ""

    def __init__(self) -> None:
        self.watchers: dict[str, OnText] = {}

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def channels(self) -> Json:
        raise NotImplementedError

    def discord_url(self) -> str | None:
        return None

    def push(self, number: int, kind: str) -> Sent:
        raise NotImplementedError

    def bot_texts(self, sent: Sent) -> list[str]:
        raise NotImplementedError

    def last_touched(self, sent: Sent, since: int) -> float:
        """When a call of the bot last touched the chat (monotonic), among calls `since` on."""
        raise NotImplementedError

    def call_count(self) -> int:
        raise NotImplementedError

    def on_text(self, chat: str, text: str, final: bool) -> None:
        watcher = self.watchers.get(chat)
        if watcher is not None:
            watcher(chat, text, final)


class TelegramPlatform(Platform):
    name = "telegram"
    ready_pattern = r"telegram: polling as @"

    def __init__(self) -> None:
        super().__init__()
        self.fake = WatchedTelegram()
        self.fake.on_text = self.on_text

    async def start(self) -> None:
        await self.fake.start()

    async def stop(self) -> None:
        await self.fake.stop()

    def channels(self) -> Json:
        return {"telegram": {"token": self.fake.token, "api_base_url": self.fake.base_url,
                             "file_base_url": self.fake.base_file_url, "poll_timeout": 2,
                             "edit_interval": EDIT_INTERVAL, "draft_interval": 0.1}}

    def push(self, number: int, kind: str) -> Sent:
        if kind == "dm":
            chat = 20_000 + number
            update = self.fake.push_text(chat_id=chat, from_id=chat, from_name="Trial",
                                         text=PROMPT)
        else:
            chat = -(1_000_000 + number)
            username = self.fake.bot_user["username"]
            update = self.fake.push_text(chat_id=chat, from_id=30_000 + number,
                                         from_name="Trial", chat_type="group",
                                         chat_title=f"Trial {number}",
                                         text=f"@{username} {PROMPT}")
        return Sent(str(chat), str(update["message"]["message_id"]))

    def bot_texts(self, sent: Sent) -> list[str]:
        return [str(m.get("text", "")) for m in self.fake.sent_messages(int(sent.chat))]

    def last_touched(self, sent: Sent, since: int) -> float:
        chat = int(sent.chat)
        return max((c.at for c in self.fake.calls[since:] if c.params.get("chat_id") == chat),
                   default=0.0)

    def call_count(self) -> int:
        return len(self.fake.calls)


class DiscordPlatform(Platform):
    name = "discord"
    ready_pattern = r"discord: connected as"

    def __init__(self) -> None:
        super().__init__()
        self.fake = WatchedDiscord(token=DISCORD_TOKEN)
        self.fake.on_text = self.on_text
        self._references: dict[str, str] = {}  # inbound message id -> its channel

    async def start(self) -> None:
        await self.fake.start()

    async def stop(self) -> None:
        await self.fake.stop()

    def channels(self) -> Json:
        return {"discord": {"token": DISCORD_TOKEN, "edit_interval": EDIT_INTERVAL}}

    def discord_url(self) -> str | None:
        return self.fake.base_url

    def push(self, number: int, kind: str) -> Sent:
        if kind == "dm":
            msg = self.fake.dm(author_id=400_000_000_000_000_000 + number,
                               author_name=f"trial{number}", content=PROMPT)
        else:
            msg = self.fake.guild_message(author_id=500_000_000_000_000_000 + number,
                                          author_name=f"trial{number}", content=PROMPT,
                                          mention_bot=True)
        return Sent(str(msg["channel_id"]), str(msg["id"]))

    def _bot_messages(self, sent: Sent) -> list[Json]:
        mine = [m for m in self.fake.messages_in(int(sent.chat))
                if int(m["author"]["id"]) == self.fake.bot_id]
        if int(sent.chat) != self.fake.channel_id:
            return mine  # a DM channel of this trial's own
        # The guild channel is shared: a reply there answers its question by reference.
        return [m for m in mine
                if (m.get("message_reference") or {}).get("message_id") == sent.message_id]

    def bot_texts(self, sent: Sent) -> list[str]:
        return [str(m.get("content") or "") for m in self._bot_messages(sent)]

    def last_touched(self, sent: Sent, since: int) -> float:
        prefix = f"/channels/{sent.chat}"
        return max((c.at for c in self.fake.calls[since:] if c.path.startswith(prefix)),
                   default=0.0)

    def call_count(self) -> int:
        return len(self.fake.calls)


@dataclass
class Trial:
    platform: str
    number: int
    kind: str  # dm | group
    signal: str  # "kill -9" | "SIGTERM" | "" (a calibration turn, not signalled)
    mode: str  # random | window | calibrate
    delay: float = 0.0  # random mode: seconds after the push
    chat: str = ""
    message_id: str = ""
    pushed_at: float = 0.0
    final_at: float | None = None  # the final text reached the fake
    row_at: float | None = None  # the turn's row was first seen in the database
    signalled_at: float | None = None
    exit_code: int | None = None
    exit_seconds: float | None = None
    hung: bool = False
    window_missed: bool = False  # window mode, but no final send was seen
    restarts_failed: int = 0
    state: str | None = None
    turn_rows: int = 0
    settled: str = ""  # how the wait ended: settled | never-stored | timeout
    complete: int = 0
    truncated: int = 0
    other: int = 0
    texts: list[str] = field(default_factory=list)

    @property
    def lost(self) -> bool:
        return self.complete == 0

    @property
    def doubled(self) -> bool:
        return self.complete >= 2

    @property
    def truncated_left(self) -> bool:
        return self.truncated > 0 and len(self.texts) >= 2

    @property
    def window(self) -> float | None:
        """Final send → turn row, when no signal came between them."""
        if self.final_at is None or self.row_at is None or self.row_at < self.final_at:
            return None
        if self.signalled_at is not None and self.signalled_at <= self.row_at:
            return None
        return self.row_at - self.final_at


def classify(texts: list[str]) -> tuple[int, int, int]:
    complete = truncated = other = 0
    for text in (t.strip() for t in texts):
        if text == FULL:
            complete += 1
        elif text and FULL.startswith(text):
            truncated += 1
        else:
            other += 1
    return complete, truncated, other


class RowWatcher(threading.Thread):
    """Polls the database every millisecond until the message's turn row appears."""

    def __init__(self, db: Database, platform: str, sent: Sent, trial: Trial) -> None:
        super().__init__(daemon=True)
        self.db, self.platform, self.sent, self.trial = db, platform, sent, trial
        self.done = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + 15.0
        while not self.done.is_set() and time.monotonic() < deadline:
            _, turns = self.db.message(self.platform, self.sent.chat, self.sent.message_id)
            if turns:
                self.trial.row_at = time.monotonic()
                return
            time.sleep(0.001)


class Runner:
    def __init__(self, platform: Platform, service: ServiceProcess, db: Database,
                 turn_seconds: float) -> None:
        self.platform = platform
        self.service = service
        self.db = db
        self.turn_seconds = turn_seconds

    async def run(self, trial: Trial) -> Trial:
        since = self.platform.call_count()
        sent = self.platform.push(trial.number, trial.kind)
        trial.chat, trial.message_id = sent.chat, sent.message_id
        trial.pushed_at = time.monotonic()
        watcher = RowWatcher(self.db, self.platform.name, sent, trial)
        signum = SIGNALS.get(trial.signal)
        signalled = asyncio.Event()

        def on_text(_chat: str, text: str, final: bool) -> None:
            if not final or text.strip() != FULL or trial.final_at is not None:
                return
            trial.final_at = time.monotonic()
            if trial.mode == "window" and signum is not None:
                # Inside the fake's handler: the text is on the platform, the answer to the
                # service's request is not sent yet.
                trial.signalled_at = time.monotonic()
                self.service.send(signum)
                signalled.set()
            else:
                watcher.start()

        self.platform.watchers[sent.chat] = on_text
        try:
            ready_at = trial.pushed_at
            if signum is not None:
                await self._signal_during_turn(trial, signum, signalled)
                ready_at = await self._restart(trial)
            await self._settle(trial, sent, since, ready_at)
        finally:
            self.platform.watchers.pop(sent.chat, None)
            watcher.done.set()
        trial.texts = self.platform.bot_texts(sent)
        trial.complete, trial.truncated, trial.other = classify(trial.texts)
        return trial

    async def _signal_during_turn(self, trial: Trial, signum: int,
                                  signalled: asyncio.Event) -> None:
        if trial.mode == "random":
            await asyncio.sleep(trial.delay)
            trial.signalled_at = time.monotonic()
            self.service.send(signum)
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(signalled.wait(), 3 * self.turn_seconds + 5)
            if trial.signalled_at is None:
                trial.window_missed = True
                trial.signalled_at = time.monotonic()
                self.service.send(signum)
        code = await self.service.wait_exit(SIGTERM_LIMIT)
        if code is None:
            trial.hung = True
            self.service.kill_group()
            code = self.service.exits[-1] if self.service.exits else None
        trial.exit_code = code
        trial.exit_seconds = time.monotonic() - trial.signalled_at

    async def _restart(self, trial: Trial) -> float:
        for _ in range(3):
            self.service.start()
            if await self.service.wait_ready():
                return time.monotonic()
            trial.restarts_failed += 1
            self.service.kill_group()
        raise RuntimeError(f"the {self.platform.name} service does not start any more; see "
                           f"{self.service.stderr_path}")

    async def _settle(self, trial: Trial, sent: Sent, since: int, ready_at: float) -> None:
        deadline = ready_at + SETTLE_LIMIT
        while True:
            now = time.monotonic()
            state, turns = self.db.message(self.platform.name, sent.chat, sent.message_id)
            quiet = now - max(self.platform.last_touched(sent, since), ready_at) >= QUIET
            done = state in SETTLED_STATES and (turns > 0 or state == "ignored")
            if quiet and done:
                trial.settled = "settled"
            elif quiet and state is None and now - ready_at >= NEVER_STORED_AFTER:
                trial.settled = "never-stored"
            elif now > deadline:
                trial.settled = "timeout"
            if trial.settled:
                trial.state, trial.turn_rows = state, turns
                return
            await asyncio.sleep(0.05)


def plan(platform: str, kill_trials: int, term_trials: int, calibration: int,
         rng: random.Random) -> tuple[list[Trial], list[Trial]]:
    calibrate = [Trial(platform, n, ("dm", "group")[n % 2], "", "calibrate")
                 for n in range(calibration)]
    trials: list[Trial] = []
    for name, count, every in (("kill -9", kill_trials, 4), ("SIGTERM", term_trials, 5)):
        windows = count // every
        # DMs and groups take turns within each mode, so both kinds get window trials.
        for mode, n in (("window", windows), ("random", count - windows)):
            trials += [Trial(platform, 0, ("dm", "group")[i % 2], name, mode) for i in range(n)]
    rng.shuffle(trials)
    for number, trial in enumerate(trials, start=calibration):
        trial.number = number
    return calibrate, trials


async def run_platform(name: str, args: argparse.Namespace, rng: random.Random,
                       work: Path, deadline: float) -> tuple[list[Trial], list[str]]:
    platform: Platform = TelegramPlatform() if name == "telegram" else DiscordPlatform()
    notes: list[str] = []
    data_dir = work / name
    data_dir.mkdir(parents=True)
    done: list[Trial] = []
    async with FakeOllama((MODEL,)) as llm:
        llm.script(*[REPLY] * 20_000)
        await platform.start()
        config = service_config(data_dir, llm.base_url, platform.channels())
        service = ServiceProcess.for_platform(name, args.repo, config, data_dir,
                                              platform.ready_pattern, platform.discord_url())
        db = Database(data_dir / "hearthbot.db")
        try:
            service.start()
            if not await service.wait_ready():
                raise RuntimeError(f"the {name} service did not start; see "
                                   f"{service.stderr_path}")
            calibrate, trials = plan(name, args.trials, args.trials // 2, args.calibration, rng)
            runner = Runner(platform, service, db, turn_seconds=5.0)
            for trial in calibrate:
                done.append(await runner.run(trial))
            turns = [t.row_at - t.pushed_at for t in done if t.row_at is not None]
            if turns:
                runner.turn_seconds = statistics.median(turns)
            notes.append(f"{name}: a whole turn (push → turn row) takes "
                         f"{runner.turn_seconds:.2f} s (median of {len(turns)} undisturbed)")
            for trial in trials:
                trial.delay = rng.uniform(0.0, runner.turn_seconds)
            for index, trial in enumerate(trials):
                if time.monotonic() > deadline:
                    notes.append(f"{name}: time budget spent after {index} of {len(trials)} "
                                 "trials")
                    break
                done.append(await runner.run(trial))
                if args.verbose:
                    print(_line(done[-1]), file=sys.stderr, flush=True)
        finally:
            await service.stop()
            await platform.stop()
        notes.append(f"{name}: {service.starts} service starts; stderr of all runs in "
                     f"{service.stderr_path}")
    return done, notes



def _line(t: Trial) -> str:
    return (f"{t.platform:<8} #{t.number:<4} {t.kind:<5} {t.signal or '-':<7} {t.mode:<9} "
            f"exit={t.exit_code} state={t.state} turns={t.turn_rows} {t.settled:<12} "
            f"complete={t.complete} truncated={t.truncated} other={t.other}")


def report(trials: list[Trial], notes: list[str], header: str) -> str:
    out = [header, ""]
    signalled = [t for t in trials if t.signal]
    rows: list[tuple[object, ...]] = [
        ("signal", "platform", "chat", "trials", "lost", "doubled", "truncated-left", "other")]
    for sig in SIGNALS:
        for platform in sorted({t.platform for t in signalled}):
            for kind in ("dm", "group"):
                group = [t for t in signalled
                         if t.signal == sig and t.platform == platform and t.kind == kind]
                if group:
                    rows.append(_row(sig, platform, kind, group))
        group = [t for t in signalled if t.signal == sig]
        if group:
            rows.append(_row(sig, "all", "all", group))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    out += ["  ".join(str(c).rjust(w) if i >= 3 else str(c).ljust(w)
                      for i, (c, w) in enumerate(zip(r, widths, strict=True))) for r in rows]
    out.append("")
    for sig in SIGNALS:
        window = [t for t in signalled if t.signal == sig and t.mode == "window"]
        if not window:
            continue
        missed = sum(t.window_missed for t in window)
        parts = sorted({(t.platform, t.kind) for t in window})
        detail = ", ".join(
            f"{p} {k} {sum(t.doubled for t in window if (t.platform, t.kind) == (p, k))}/"
            f"{sum((t.platform, t.kind) == (p, k) for t in window)}" for p, k in parts)
        out.append(f"{sig} in the send→record window: {len(window)} trials, "
                   f"{sum(t.doubled for t in window)} doubled ({detail}), "
                   f"{sum(t.lost for t in window)} lost"
                   + (f"; {missed} never reached the window" if missed else ""))
    widths_ms = [w * 1000 for t in trials if (w := t.window) is not None]
    if widths_ms:
        out.append(f"window width (final send at the fake → turn row in SQLite, 1 ms polling): "
                   f"median {statistics.median(widths_ms):.1f} ms, p95 "
                   f"{percentile(widths_ms, 0.95):.1f} ms, max {max(widths_ms):.1f} ms "
                   f"(n={len(widths_ms)})")
    terms = [t for t in signalled if t.signal == "SIGTERM"]
    if terms:
        clean = sum(t.exit_code == 0 for t in terms)
        seconds = [t.exit_seconds for t in terms if t.exit_seconds is not None and not t.hung]
        out.append(f"SIGTERM: exit code 0 in {clean}/{len(terms)}, hung (> {SIGTERM_LIMIT:.0f} s)"
                   f" {sum(t.hung for t in terms)}, time to exit median "
                   f"{statistics.median(seconds) if seconds else float('nan'):.2f} s")
    stuck = [t for t in signalled if t.settled != "settled"]
    if stuck:
        kinds = {k: sum(t.settled == k for t in stuck) for k in ("never-stored", "timeout")}
        out.append("not settled: " + ", ".join(f"{v} {k}" for k, v in kinds.items() if v)
                   + " (never-stored: no inbox row after the restart)")
    failed = sum(t.restarts_failed for t in signalled)
    if failed:
        out.append(f"restarts that died before ready: {failed}")
    calibration = [t for t in trials if not t.signal]
    bad = [t for t in calibration if t.complete != 1 or t.truncated or t.other]
    out.append(f"undisturbed calibration turns: {len(calibration)}, of which not answered "
               f"exactly once: {len(bad)}")
    out += notes
    return "\n".join(out)


def _row(sig: str, platform: str, kind: str, group: list[Trial]) -> tuple[object, ...]:
    return (sig, platform, kind, len(group), sum(t.lost for t in group),
            sum(t.doubled for t in group), sum(t.truncated_left for t in group),
            sum(t.other > 0 for t in group))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--trials", type=int, default=100,
                        help="kill -9 trials per platform; SIGTERM gets half as many (100)")
    parser.add_argument("--quick", action="store_true", help="10 + 5 trials per platform")
    parser.add_argument("--platform", choices=("telegram", "discord", "both"), default="both")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--calibration", type=int, default=None,
                        help="undisturbed turns first, to time a turn and the window (20; 4 "
                             "with --quick)")
    parser.add_argument("--repo", type=Path, default=OWN_CHECKOUT,
                        help="the checkout whose code the service runs (this one)")
    parser.add_argument("--budget", type=float, default=90.0,
                        help="minutes after which no new trial starts (90)")
    parser.add_argument("--json", type=Path, help="write every trial as one JSON line here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary data dirs")
    parser.add_argument("-v", "--verbose", action="store_true", help="one line per trial")
    args = parser.parse_args(argv)
    if args.quick:
        args.trials = 10
    if args.calibration is None:
        args.calibration = 4 if args.quick else 20
    args.repo = args.repo.resolve()
    return args


async def main_async(args: argparse.Namespace) -> str:
    rng = random.Random(args.seed)
    platforms = ("telegram", "discord") if args.platform == "both" else (args.platform,)
    deadline = time.monotonic() + args.budget * 60
    started = time.monotonic()
    trials: list[Trial] = []
    notes: list[str] = []
    work = Path(tempfile.mkdtemp(prefix="hearthbot-crash-"))
    for name in platforms:
        done, more = await run_platform(name, args, rng, work, deadline)
        trials += done
        notes += more
    if args.json is not None:
        with args.json.open("w") as file:
            for trial in trials:
                file.write(json.dumps(asdict(trial)) + "\n")
    if not args.keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
        notes = [n for n in notes if "stderr of all runs" not in n]
    header = (f"crash trial: code {code_under_test(args.repo)}, seed {args.seed}, "
              f"{time.monotonic() - started:.0f} s")
    return report(trials, notes, header)


def main(argv: list[str] | None = None) -> int:
    install_cleanup()
    print(asyncio.run(main_async(parse_args(argv))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
