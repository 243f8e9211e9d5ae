"""Fuzz soak: thousands of malformed updates through the fakes into the real `hearthbot run`.

    python -m tests.trials.soak [--count 10000] [--platform telegram|discord|both] [--seed S]
                                [--valid-every 50] [--after 20] [--repo PATH]

Per platform, `--count` mutated payloads from tests/trials/mutations.py (Telegram updates
pushed to the fake Bot API; Discord gateway dispatches sent raw on the fake's live session),
with a valid message after every `--valid-every`. They go in batches; after each batch the
soak waits until the batch's valid message is stored (or the service has died) and until at
most `--max-backlog` stored messages still wait for their answer. A dead service
is started again and counted, up to `--max-restarts`; a service that dies again without taking
in anything new is in a crash loop, and the fuzz stops there (the report says how much of it
got through). Then `--after` valid messages are sent and must each be answered exactly once.

Reported: service exits (and the error each run ended with), adapter deaths and restarts as
the log tells them, tracebacks in the log (those inside a record whose message matches
`--handled` count as deliberate, handled quarantine; the rest as unhandled, and tracebacks
printed outside any log record apart), and how the valid messages were answered.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.fakes.discord import FakeDiscord
from tests.fakes.llm_backends import FakeOllama
from tests.fakes.telegram import FakeTelegram
from tests.trials.harness import (
    MODEL,
    OWN_CHECKOUT,
    Database,
    Json,
    LogSummary,
    ServiceProcess,
    code_under_test,
    install_cleanup,
    read_log,
    service_config,
)
from tests.trials.mutations import DiscordWorld, discord_dispatches, telegram_updates

DISCORD_TOKEN = "MTAwMDAwMDAwMDAwMDAwMDAx.hearth-soak.s3cret-t0ken-value"
BATCH_LIMIT = 60.0  # seconds a batch may take to be taken in
SETTLE_LIMIT = 900.0  # the longest wait for a backlog that keeps shrinking
STALL = 30.0  # a backlog that has not shrunk for this long is left as it is
CRASH_LOOP = 4  # deaths in a row without anything new taken in
TELEGRAM_FIRST_ID = 1_000_000  # the soak numbers its updates itself, from here
# Seconds between two sends to one Discord channel: the fuzz's guild messages all go to one
# channel, and thousands of replies there at the default 1.2 s would take the soak hours.
# Telegram's fuzz spreads over hundreds of chats and keeps its defaults: faster pacing there
# only floods the client's connection pool.
DISCORD_PACING = 0.2
ADAPTER_EVENTS = re.compile(
    r"\badapter\b.*\b(stopped|died|crash\w*|fail\w*|restart\w*)|\brestart(ing|ed)?\b",
    re.IGNORECASE)
EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt|Failure)\b.*)$")


class FuzzDiscord(FakeDiscord):
    """FakeDiscord that also sends frames exactly as given: the fake's own `dispatch` reads
    the fields a malformed payload may lack."""

    def send_frame(self, frame: Json) -> bool:
        """Onto the live session, numbered; False when no client is connected (then the frame
        is lost, as a dispatch is on Discord while a bot is offline)."""
        session = self._session
        if session is None or session.conn is None:
            return False
        session.seq += 1
        numbered = {**frame, "s": session.seq}
        session.backlog.append(numbered)
        session.conn.send(numbered)
        return True


@dataclass
class Expected:
    """A valid message and where its answers are found."""

    chat: str
    message_id: str
    during_fuzz: bool
    reference: bool = False  # a guild message: its answers reference it


@dataclass
class Outcome:
    platform: str
    pushed: int = 0  # mutated payloads handed to the fake
    delivered: int = 0  # of which went to a live client (Discord) or were acknowledged (Telegram)
    stopped_early: str = ""
    exits: list[int] = field(default_factory=list)
    endings: collections.Counter[str] = field(default_factory=collections.Counter)
    expected: list[Expected] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)  # bot messages per expected message
    log: LogSummary | None = None
    log_bytes: int = 0
    states: dict[str, int] = field(default_factory=dict)  # inbox rows by state at the end
    seconds: float = 0.0


class Soak:
    def __init__(self, platform: str, args: argparse.Namespace, work: Path) -> None:
        self.platform = platform
        self.args = args
        self.data_dir = work / platform
        self.data_dir.mkdir(parents=True)
        self.db = Database(self.data_dir / "hearthbot.db")
        self.outcome = Outcome(platform)
        self.tg: FakeTelegram | None = None
        self.dc: FuzzDiscord | None = None
        self.service: ServiceProcess | None = None
        self.restarts_left = args.max_restarts
        self.gave_up = False
        self.exits_seen = 0
        self.deaths_in_a_row = 0
        self.taken_at_start = 0
        self.next_update_id = TELEGRAM_FIRST_ID
        self.pushed_ids: list[tuple[int, bool]] = []  # Telegram: update id, whether valid

    # ---- the service -----------------------------------------------------------------------

    def _ending(self) -> str:
        """The last exception line the run that just ended wrote, or its last line."""
        assert self.service is not None
        lines = self.service.current_output().splitlines()
        for line in reversed(lines):
            if (match := EXCEPTION_LINE.match(line)) is not None:
                return match.group(1)[:160]
        return (lines[-1][:160] if lines else "(no output)")

    async def ensure_running(self) -> bool:
        """Start the service again if it died; False once restarts are used up or the service
        is in a crash loop (it keeps dying without taking in anything new)."""
        assert self.service is not None
        while not self.service.alive():
            if self.gave_up:
                return False
            self.collect_exits()
            progress = self.taken_in() > self.taken_at_start
            self.deaths_in_a_row = 0 if progress else self.deaths_in_a_row + 1
            if self.deaths_in_a_row >= CRASH_LOOP:
                self.give_up(f"crash loop: {self.deaths_in_a_row} deaths in a row without "
                             "taking anything new in")
            elif self.restarts_left <= 0:
                self.give_up(f"restarts used up ({self.args.max_restarts})")
            else:
                self.restarts_left -= 1
                self.start()
                await self.service.wait_ready()
        return True

    def collect_exits(self) -> None:
        """Count the runs that ended since the last look, with the error each ended on."""
        assert self.service is not None
        self.service.reap()
        for code in self.service.exits[self.exits_seen:]:
            self.outcome.exits.append(code)
            self.outcome.endings[self._ending()] += 1
        self.exits_seen = len(self.service.exits)

    def give_up(self, why: str) -> None:
        self.gave_up = True
        if why not in self.outcome.stopped_early:
            self.outcome.stopped_early += ("; " if self.outcome.stopped_early else "") + why

    def start(self) -> None:
        assert self.service is not None
        self.taken_at_start = self.taken_in()
        self.service.start()

    # ---- what was taken in -----------------------------------------------------------------

    def taken_in(self) -> int:
        """A figure that grows whenever the service takes something in."""
        rows = self.db.query("select count(*) from inbox")
        stored = int(rows[0][0]) if rows else 0
        if self.tg is not None:
            offsets = [int(c.params.get("offset") or 0) for c in self.tg.calls_to("getUpdates")]
            return stored + max(offsets, default=0)
        return stored

    async def wait_stored(self, expected: Expected) -> bool:
        """Until the message is in the inbox; False if the service died first."""
        assert self.service is not None
        deadline = time.monotonic() + BATCH_LIMIT
        while time.monotonic() < deadline:
            if self.db.message(self.platform, expected.chat, expected.message_id)[0] is not None:
                return True
            if not self.service.alive():
                return False
            await asyncio.sleep(0.05)
        return self.service.alive()

    # ---- the fuzz --------------------------------------------------------------------------

    async def fuzz(self) -> None:
        args = self.args
        if self.tg is not None:
            items = telegram_updates(args.seed, args.count, valid_every=args.valid_every)
        else:
            items = discord_dispatches(args.seed, args.count, valid_every=args.valid_every,
                                       world=self.world)
        batch: list[tuple[bool, Json]] = []
        deadline = time.monotonic() + args.budget * 60
        for item in items:
            if time.monotonic() > deadline:
                self.outcome.stopped_early = f"time budget ({args.budget:g} min) spent"
                return
            batch.append(item)
            if len(batch) >= args.batch and item[0]:
                if not await self.send_batch(batch):
                    return
                batch = []
        if batch:
            await self.send_batch(batch)

    async def send_batch(self, batch: list[tuple[bool, Json]]) -> bool:
        if not await self.ensure_running():
            return False
        last: Expected | None = None
        for valid, payload in batch:
            if valid:
                last = self.expect(payload)
            else:
                self.outcome.pushed += 1
            self.outcome.delivered += self.push(payload, valid)
        if last is not None and not await self.wait_stored(last):
            return await self.ensure_running()
        # Answers are not awaited one by one, but the backlog is kept bounded: the soak
        # measures what malformed input does, not how many chats the service can serve at once.
        await self.drain(self.args.max_backlog)
        return True

    def push(self, payload: Json, valid: bool) -> int:
        if self.tg is not None:
            self.pushed_ids.append((self.next_update_id, valid))
            self.tg.push_update({"update_id": self.next_update_id, **payload})
            self.next_update_id += 1
            return 0  # counted from the acknowledged offset at the end
        assert self.dc is not None
        sent = self.dc.send_frame(payload)
        return int(sent and not valid)

    def expect(self, payload: Json) -> Expected:
        if self.tg is not None:
            message = payload["message"]
            expected = Expected(str(message["chat"]["id"]), str(message["message_id"]), True)
        else:
            data = payload["d"]
            expected = Expected(str(data["channel_id"]), str(data["id"]), True,
                                reference="guild_id" in data)
        self.outcome.expected.append(expected)
        return expected

    # ---- after the fuzz ----------------------------------------------------------------------

    def backlog(self) -> int:
        """Messages stored but not answered yet."""
        rows = self.db.query("select count(*) from inbox where platform = ? and "
                             "state = 'received'", self.platform)
        return int(rows[0][0]) if rows else 0

    async def drain(self, limit: int, quiet: float = 0.0) -> None:
        """Until at most `limit` messages wait for an answer (and the bot has made no call
        for `quiet` seconds), or the backlog has stopped shrinking for STALL seconds."""
        calls, quiet_since = -1, time.monotonic()
        smallest, shrunk_at = self.backlog(), time.monotonic()
        deadline = time.monotonic() + SETTLE_LIMIT
        while time.monotonic() < deadline:
            if not await self.ensure_running():
                return
            now = time.monotonic()
            if (count := self.bot_calls()) != calls:
                calls, quiet_since = count, now
            waiting = self.backlog()
            if waiting < smallest:
                smallest, shrunk_at = waiting, now
            if waiting <= limit and now - quiet_since >= quiet:
                return
            if now - shrunk_at > STALL:
                return
            await asyncio.sleep(0.2)

    async def settle(self) -> None:
        """Until nothing is left unanswered and the fake has been quiet for two seconds."""
        await self.drain(0, quiet=2.0)

    async def after(self) -> None:
        """Valid messages once the fuzz is over: each must be answered exactly once.

        A service that gave up during the fuzz gets a few more starts to answer them."""
        self.gave_up, self.deaths_in_a_row = False, 0
        self.restarts_left = max(self.restarts_left, CRASH_LOOP)
        for k in range(self.args.after):
            if self.tg is not None:
                if k % 2 == 0:
                    chat = 9_000_000 + k
                    update = self.tg.push_text(chat_id=chat, from_id=chat, text=f"after {k}")
                else:
                    chat = -1_009_000_000 - k
                    update = self.tg.push_text(
                        chat_id=chat, from_id=9_000_000 + k, chat_type="group",
                        text=f"@{self.tg.bot_user['username']} after {k}")
                message = update["message"]
                self.outcome.expected.append(
                    Expected(str(chat), str(message["message_id"]), False))
            else:
                dc = self._dc()
                if k % 2 == 0:
                    msg = dc.dm(author_id=900_000_000_000_000_000 + k, author_name=f"after{k}",
                                content=f"after {k}")
                else:
                    msg = dc.guild_message(author_id=910_000_000_000_000_000 + k,
                                           author_name=f"after{k}", content=f"after {k}",
                                           mention_bot=True)
                self.outcome.expected.append(Expected(str(msg["channel_id"]), str(msg["id"]),
                                                      False, reference=k % 2 == 1))
        deadline = time.monotonic() + BATCH_LIMIT
        while time.monotonic() < deadline:
            # A service that cannot stay up is still given its chances to answer.
            await self.ensure_running()
            answered = [self.answers(e) for e in self.outcome.expected if not e.during_fuzz]
            if all(n >= 1 for n in answered):
                break
            await asyncio.sleep(0.2)
        await self.settle()

    def answers(self, expected: Expected) -> int:
        if self.tg is not None:
            return len(self.tg.sent_messages(int(expected.chat)))
        dc = self._dc()
        mine = [m for m in dc.messages_in(int(expected.chat))
                if int(m["author"]["id"]) == dc.bot_id]
        if expected.reference:
            return sum((m.get("message_reference") or {}).get("message_id")
                       == expected.message_id for m in mine)
        return len(mine)

    def bot_calls(self) -> int:
        """Calls the bot made to the platform, long polls aside (they go on while idle)."""
        if self.tg is not None:
            return sum(c.method != "getUpdates" for c in self.tg.calls)
        return len(self._dc().calls)

    def _dc(self) -> FuzzDiscord:
        assert self.dc is not None
        return self.dc

    # ---- the whole soak ----------------------------------------------------------------------

    async def run(self) -> Outcome:
        started = time.monotonic()
        async with FakeOllama((MODEL,)) as llm:
            if self.platform == "telegram":
                self.tg = FakeTelegram()
                await self.tg.start()
                channels: Json = {"telegram": {
                    "token": self.tg.token, "api_base_url": self.tg.base_url,
                    "file_base_url": self.tg.base_file_url, "poll_timeout": 2}}
                ready, url = r"telegram: polling as @", None
            else:
                self.dc = FuzzDiscord(token=DISCORD_TOKEN)
                await self.dc.start()
                self.world = self._world(self.dc)
                channels = {"discord": {"token": DISCORD_TOKEN, "edit_interval": DISCORD_PACING}}
                ready, url = r"discord: connected as", self.dc.base_url
            config = service_config(self.data_dir, llm.base_url, channels)
            self.service = ServiceProcess.for_platform(self.platform, self.args.repo, config,
                                                       self.data_dir, ready, url)
            try:
                self.start()
                if not await self.service.wait_ready():
                    raise RuntimeError(f"the {self.platform} service did not start; see "
                                       f"{self.service.stderr_path}")
                await self.fuzz()
                await self.settle()
                await self.after()
                self.outcome.answers = [self.answers(e) for e in self.outcome.expected]
                if self.tg is not None:
                    offset = max((int(c.params.get("offset") or 0)
                                  for c in self.tg.calls_to("getUpdates")), default=0)
                    self.outcome.delivered = sum(not valid and update_id < offset
                                                 for update_id, valid in self.pushed_ids)
            finally:
                self.collect_exits()
                await self.service.stop()  # the soak's own stop is not counted
                if self.tg is not None:
                    await self.tg.stop()
                if self.dc is not None:
                    await self.dc.stop()
            self.outcome.log = read_log(self.service.stderr_path.read_text("utf-8", "replace"))
            self.outcome.log_bytes = self.service.stderr_path.stat().st_size
            self.outcome.states = {str(state): int(n) for state, n in self.db.query(
                "select state, count(*) from inbox where platform = ? group by state",
                self.platform)}
        self.outcome.seconds = time.monotonic() - started
        return self.outcome

    world: DiscordWorld = DiscordWorld()

    def _world(self, dc: FuzzDiscord) -> DiscordWorld:
        """The fake's bot, guild and channel, and DM channels: one per valid DM."""
        wanted = self.args.count // max(self.args.valid_every, 1) // 2 + 1
        valid = tuple((u, dc.dm_channel_id(u)) for u in
                      (800_000_000_000_000_000 + i for i in range(wanted)))
        fuzz = tuple((u, dc.dm_channel_id(u)) for u in
                     (810_000_000_000_000_000 + i for i in range(20)))
        return DiscordWorld(bot_id=dc.bot_id, bot_name=dc.bot_name, guild_id=dc.guild_id,
                            channel_id=dc.channel_id, dm_channels=valid, fuzz_dm_channels=fuzz)


def report(outcomes: list[Outcome], args: argparse.Namespace, handled: re.Pattern[str]) -> str:
    out = [f"fuzz soak: code {code_under_test(args.repo)}, seed {args.seed}, "
           f"{args.count} mutated payloads per platform, a valid message after every "
           f"{args.valid_every}", ""]
    for o in outcomes:
        assert o.log is not None
        during = [n for e, n in zip(o.expected, o.answers, strict=True) if e.during_fuzz]
        after = [n for e, n in zip(o.expected, o.answers, strict=True) if not e.during_fuzz]
        tracebacks = sum(r.tracebacks for r in o.log.records)
        handled_tb = sum(r.tracebacks for r in o.log.matching(handled))
        adapter = o.log.matching(ADAPTER_EVENTS)
        out += [
            f"{o.platform} ({o.seconds:.0f} s)",
            f"  fuzz: {o.pushed} pushed, {o.delivered} "
            + ("acknowledged by the service" if o.platform == "telegram"
               else "sent while a client was connected")
            + (f"; stopped early: {o.stopped_early}" if o.stopped_early else ""),
            f"  service exits: {len(o.exits)}"
            + (f" (codes {dict(collections.Counter(o.exits))})" if o.exits else ""),
        ]
        for ending, n in o.endings.most_common(5):
            out.append(f"    {n} x {ending}")
        out.append(f"  adapter deaths/restarts in the log: {len(adapter)}")
        for message, n in collections.Counter(
                re.sub(r"-?\d+", "#", r.message)[:120] for r in adapter).most_common(4):
            out.append(f"    {n} x {message}")
        out.append(f"  tracebacks in the log: {tracebacks}, of which handled (quarantine) "
                   f"{handled_tb}, unhandled {tracebacks - handled_tb}; outside any log record "
                   f"{o.log.raw_tracebacks}")
        # Told apart by what they say, not by which message or chat they name.
        unhandled = collections.Counter(
            re.sub(r"-?\d+", "#", f"{r.level} {r.name}: {r.message}")[:100]
            for r in o.log.records if r.tracebacks and not handled.search(r.message))
        for record, n in unhandled.most_common(5):
            out.append(f"    {n} x {record}")
        out.append("  inbox at the end: " + ", ".join(
            f"{state} {n}" for state, n in sorted(o.states.items())) + f"; log "
            f"{o.log_bytes / 1e6:.1f} MB")
        out.append(_answered("valid messages during the fuzz", during))
        out.append(_answered("valid messages after the fuzz", after))
        out.append("")
    return "\n".join(out)


def _answered(what: str, counts: list[int]) -> str:
    once = sum(n == 1 for n in counts)
    return (f"  {what}: {len(counts)}, answered exactly once {once}, never "
            f"{sum(n == 0 for n in counts)}, more than once {sum(n > 1 for n in counts)}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--count", type=int, default=10_000,
                        help="mutated payloads per platform (10000)")
    parser.add_argument("--platform", choices=("telegram", "discord", "both"), default="both")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--valid-every", type=int, default=50,
                        help="a valid message after every N mutated ones (50)")
    parser.add_argument("--batch", type=int, default=100,
                        help="payloads pushed before waiting for them to be taken in (100)")
    parser.add_argument("--max-backlog", type=int, default=50,
                        help="unanswered messages allowed before the next batch waits (50)")
    parser.add_argument("--after", type=int, default=20,
                        help="valid messages sent once the fuzz is over (20)")
    parser.add_argument("--max-restarts", type=int, default=25,
                        help="service restarts per platform before giving up (25)")
    parser.add_argument("--budget", type=float, default=30.0,
                        help="minutes of fuzz per platform before the rest is left out (30)")
    parser.add_argument("--handled", default=r"quarantin",
                        help="regex: a log record whose message matches it is a deliberate, "
                             "handled quarantine and its traceback is not counted as unhandled")
    parser.add_argument("--repo", type=Path, default=OWN_CHECKOUT,
                        help="the checkout whose code the service runs (this one)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary data dirs")
    args = parser.parse_args(argv)
    args.repo = args.repo.resolve()
    return args


async def main_async(args: argparse.Namespace) -> str:
    work = Path(tempfile.mkdtemp(prefix="hearthbot-soak-"))
    platforms = ("telegram", "discord") if args.platform == "both" else (args.platform,)
    outcomes = []
    for name in platforms:
        outcomes.append(await Soak(name, args, work).run())
    text = report(outcomes, args, re.compile(args.handled, re.IGNORECASE))
    if args.keep:
        text += f"data dirs and service output kept in {work}"
    else:
        shutil.rmtree(work, ignore_errors=True)
    return text


def main(argv: list[str] | None = None) -> int:
    install_cleanup()
    print(asyncio.run(main_async(parse_args(argv))))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
