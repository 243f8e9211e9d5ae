"""Seeded generators of malformed platform payloads, with valid messages interleaved.

A small pure API, shared by the fuzz soak (tests/trials/soak.py) and any in-suite test:

    for valid, update in telegram_updates(seed=7, count=2000, valid_every=50):
        fake_tg.push_update(update)          # no update_id: the fake numbers them

    world = DiscordWorld(bot_id=fake.bot_id, guild_id=fake.guild_id,
                         channel_id=fake.channel_id, dm_channels=((user, channel), ...))
    for valid, frame in discord_dispatches(seed=7, count=2000, valid_every=50, world=world):
        fuzz_discord.send_frame(frame)       # tests/trials/soak.py's FuzzDiscord: sent raw

(FakeDiscord.dispatch itself reads fields that a malformed payload may lack, so frames are
sent raw on the live session.)

Each call yields `count` mutated payloads and, after every `valid_every` of them, one valid
message (`valid` is True) that a correct service answers exactly once. The same seed always
yields the same sequence. Valid messages are told apart by their chats: each valid Telegram
message has a chat of its own, a valid Discord DM uses the next of
`world.dm_channels`, and a valid guild message mentions the bot (its reply references it).
Mutated payloads never use those chats. Everything yielded is plain JSON data (lone surrogates
included: `json.dumps` escapes them).

What is mutated: keys dropped, values nulled or of the wrong JSON type, huge strings, lone
surrogates, out-of-range numbers and entity offsets, unknown keys, unknown update kinds and
dispatch names, empty payloads, Telegram `poll` updates without `allows_revoting`,
`{"message": {}}`, and Discord dispatches such as MESSAGE_DELETE with `{"v": "0"}`.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

Json = dict[str, Any]

# Valid Telegram messages live in chats of their own, far from anything the mutations use.
VALID_DM_BASE = 7_000_000
VALID_GROUP_BASE = -1_007_000_000
FUZZ_DM_BASE = 5_000_000
FUZZ_GROUP_BASE = -1_005_000_000
SURROGATES = ("\ud800", "\udfff", "\udbff", "\udc00")
BIG_NUMBERS = (2**63, -(2**63) - 1, 2**70, -1, 0, 2**31, 10**30)
DISCORD_EPOCH_MS = 1_420_070_400_000
DATE = 1_760_000_000  # every message's Unix time: a fixed moment keeps the output seeded


@dataclass(frozen=True)
class TelegramWorld:
    """Who the bot is; the defaults are those of tests/fakes/telegram.py's FakeTelegram."""

    bot_id: int = 123456
    bot_username: str = "hearth_test_bot"


@dataclass(frozen=True)
class DiscordWorld:
    """The bot and the places the payloads refer to, taken from the FakeDiscord in use.

    `dm_channels` are (user id, DM channel id) pairs for the valid DMs, used in turn;
    `fuzz_dm_channels` the same for mutated DMs (without them those go to unknown channels).
    With no `dm_channels`, every valid message is a guild message that mentions the bot.
    """

    bot_id: int = 1000000000000000001
    bot_name: str = "hearth"
    guild_id: int = 1300000000000000000
    channel_id: int = 1300000000000000001
    dm_channels: tuple[tuple[int, int], ...] = ()
    fuzz_dm_channels: tuple[tuple[int, int], ...] = ()


# ---- mutation operators, on any JSON tree -------------------------------------------------------

def _slots(tree: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside the tree (dict keys and list indexes), depth first."""
    found: list[tuple[Any, ...]] = []
    if isinstance(tree, dict):
        for key, value in tree.items():
            found.append((*path, key))
            found += _slots(value, (*path, key))
    elif isinstance(tree, list):
        for index, value in enumerate(tree):
            found.append((*path, index))
            found += _slots(value, (*path, index))
    return found


def _parent(tree: Any, path: tuple[Any, ...]) -> Any:
    for step in path[:-1]:
        tree = tree[step]
    return tree


def _huge_text(rng: random.Random, limit: int) -> str:
    size = rng.choices((4097, 65_536, limit), weights=(70, 28, 2))[0]
    size = min(size, limit)
    unit = rng.choice(("a", "word ", "é", "\n", "@hearth_test_bot ", "<b>"))
    return (unit * (size // len(unit) + 1))[:size]


def _other_type(rng: random.Random, value: Any) -> Any:
    """A value of another JSON type than `value`."""
    choices: list[Any] = [None, True, 0, -7, 3.5, "", "12", "x" * 8, [], [1, "a"], {}, {"k": 1}]
    if isinstance(value, bool):
        choices = ["true", 1, None, [], {}]
    elif isinstance(value, int):
        choices = [str(value), float(value) + 0.5, [value], {"id": value}, None, True, ""]
    elif isinstance(value, float):
        choices = [str(value), [value], None, "NaN"]
    elif isinstance(value, str):
        choices = [0, 123456789, [value], {"text": value}, None, False, 1.5]
    elif isinstance(value, list):
        choices = [{}, "list", 0, None, {"0": value[:1]}]
    elif isinstance(value, dict):
        choices = [[], "object", 0, None, True, [value]]
    return copy.deepcopy(rng.choice(choices))


def _drop(rng: random.Random, tree: Json, huge: int) -> None:
    slots = [s for s in _slots(tree) if isinstance(_parent(tree, s), dict)]
    if slots:
        path = rng.choice(slots)
        del _parent(tree, path)[path[-1]]


def _null(rng: random.Random, tree: Json, huge: int) -> None:
    slots = _slots(tree)
    if slots:
        path = rng.choice(slots)
        _parent(tree, path)[path[-1]] = None


def _retype(rng: random.Random, tree: Json, huge: int) -> None:
    slots = _slots(tree)
    if slots:
        path = rng.choice(slots)
        parent = _parent(tree, path)
        parent[path[-1]] = _other_type(rng, parent[path[-1]])


def _string_slots(tree: Json) -> list[tuple[Any, ...]]:
    return [s for s in _slots(tree) if isinstance(_parent(tree, s)[s[-1]], str)]


def _huge(rng: random.Random, tree: Json, huge: int) -> None:
    slots = _string_slots(tree) or _slots(tree)
    if slots:
        path = rng.choice(slots)
        _parent(tree, path)[path[-1]] = _huge_text(rng, huge)


def _surrogate(rng: random.Random, tree: Json, huge: int) -> None:
    slots = _string_slots(tree)
    if slots:
        path = rng.choice(slots)
        parent = _parent(tree, path)
        text: str = parent[path[-1]]
        at = rng.randint(0, len(text))
        parent[path[-1]] = text[:at] + rng.choice(SURROGATES) + text[at:]


def _big_number(rng: random.Random, tree: Json, huge: int) -> None:
    slots = [s for s in _slots(tree) if isinstance(_parent(tree, s)[s[-1]], int)
             and not isinstance(_parent(tree, s)[s[-1]], bool)]
    if slots:
        path = rng.choice(slots)
        _parent(tree, path)[path[-1]] = rng.choice(BIG_NUMBERS)


def _extra_key(rng: random.Random, tree: Json, huge: int) -> None:
    dicts = [()] + [s for s in _slots(tree) if isinstance(_parent(tree, s)[s[-1]], dict)]
    path = rng.choice(dicts)
    target = tree if not path else _parent(tree, path)[path[-1]]
    target[rng.choice(("unknown_field", "__proto__", "", "x" * 300, "\ud800key"))] = (
        _other_type(rng, None))


Operator = Callable[[random.Random, Json, int], None]
OPERATORS: tuple[tuple[Operator, int], ...] = (
    (_drop, 20), (_null, 15), (_retype, 20), (_huge, 5), (_surrogate, 10), (_big_number, 10),
    (_extra_key, 10),
)


def _mutate(rng: random.Random, tree: Json, huge: int) -> Json:
    operators, weights = zip(*OPERATORS, strict=True)
    for _ in range(rng.choices((1, 2, 3), weights=(60, 30, 10))[0]):
        rng.choices(operators, weights=weights)[0](rng, tree, huge)
    return tree


def _interleaved(rng: random.Random, count: int, valid_every: int,
                 mutated: Callable[[int], Json], valid: Callable[[int], Json]
                 ) -> Iterator[tuple[bool, Json]]:
    made = 0
    for n in range(count):
        yield False, mutated(n)
        if valid_every > 0 and (n + 1) % valid_every == 0:
            yield True, valid(made)
            made += 1


# ---- Telegram -----------------------------------------------------------------------------------

def _tg_user(user_id: int, name: str = "Fuzz", is_bot: bool = False) -> Json:
    return {"id": user_id, "is_bot": is_bot, "first_name": name, "username": f"u{abs(user_id)}",
            "language_code": "en"}


def _tg_chat(chat_id: int) -> Json:
    if chat_id > 0:
        return {"id": chat_id, "type": "private", "first_name": "Fuzz"}
    return {"id": chat_id, "type": "supergroup" if chat_id < -1_000_000_000_000 else "group",
            "title": "Fuzz group"}


def _tg_message(chat_id: int, from_id: int, message_id: int, text: str,
                world: TelegramWorld) -> Json:
    message: Json = {"message_id": message_id, "date": DATE, "chat": _tg_chat(chat_id),
                     "from": _tg_user(from_id), "text": text}
    handle = f"@{world.bot_username}"
    if handle in text:
        offset = len(text[:text.index(handle)].encode("utf-16-le")) // 2
        message["entities"] = [{"type": "mention", "offset": offset, "length": len(handle)}]
    return message


def _tg_template(rng: random.Random, n: int, world: TelegramWorld, huge: int) -> Json:
    dm = FUZZ_DM_BASE + rng.randrange(200)
    group = FUZZ_GROUP_BASE - rng.randrange(50)
    mention = f"@{world.bot_username}"
    kind = rng.randrange(22)
    message_id = 10_000 + n
    if kind <= 4:
        return {"message": _tg_message(dm, dm, message_id, rng.choice(
            ("hello", "what time is it?", "/new", "/help", "", "  ")), world)}
    if kind <= 7:
        return {"message": _tg_message(group, dm, message_id, f"{mention} fuzz {n}", world)}
    if kind == 8:
        message = _tg_message(group, dm, message_id, "replying", world)
        message["reply_to_message"] = {"message_id": message_id - 1, "date": DATE,
                                       "chat": _tg_chat(group), "from": _tg_user(world.bot_id,
                                                                               "Hearth", True),
                                       "text": "an earlier answer"}
        return {"message": message}
    if kind == 9:
        message = _tg_message(dm, dm, message_id, "", world)
        del message["text"]
        message["voice"] = {"file_id": f"fuzz-voice-{n}", "file_unique_id": f"fv{n}",
                            "duration": rng.choice((1, 3, 0)), "mime_type": "audio/ogg",
                            "file_size": 1234}
        return {"message": message}
    if kind == 10:
        message = _tg_message(dm, dm, message_id, "", world)
        del message["text"]
        message["photo"] = [{"file_id": f"p{n}", "file_unique_id": f"pu{n}", "width": 90,
                             "height": 90}]
        message["caption"] = "look"
        return {"message": message}
    if kind == 11:
        return {"edited_message": {**_tg_message(dm, dm, message_id, "edited", world),
                                   "edit_date": DATE + 100}}
    if kind == 12:
        post = _tg_message(-1_009_000_000_000 - rng.randrange(5), dm, message_id, "post", world)
        post["chat"] = {"id": post["chat"]["id"], "type": "channel", "title": "Fuzz channel"}
        del post["from"]
        return {"channel_post": post}
    if kind == 13:
        return {"callback_query": {"id": str(n), "from": _tg_user(dm), "chat_instance": "ci",
                                   "data": "button", "message": _tg_message(
                                       dm, world.bot_id, message_id, "pick one", world)}}
    if kind == 14:
        return {"poll": _poll(n, rng.random() < 0.5)}
    if kind == 15:
        return {"poll_answer": {"poll_id": str(n), "user": _tg_user(dm), "option_ids": [0],
                                "option_persistent_ids": ["a"]}}
    if kind == 16:
        return {"my_chat_member": {
            "chat": _tg_chat(group), "from": _tg_user(dm), "date": DATE,
            "old_chat_member": {"status": "left", "user": _tg_user(world.bot_id, "Hearth", True)},
            "new_chat_member": {"status": "member",
                                "user": _tg_user(world.bot_id, "Hearth", True)}}}
    if kind == 17:
        return {"message_reaction": {"chat": _tg_chat(group), "message_id": message_id,
                                     "date": DATE, "user": _tg_user(dm),
                                     "old_reaction": [],
                                     "new_reaction": [{"type": "emoji", "emoji": "👍"}]}}
    if kind == 18:
        return {rng.choice(("future_update_kind", "purchased_paid_media", "x")): {
            "id": n, "from": _tg_user(dm), "payload": "?"}}
    if kind == 19:
        return {"message": {}}
    if kind == 20:
        message = _tg_message(dm, dm, message_id, "entities", world)
        message["entities"] = [{"type": rng.choice(("mention", "bot_command", "text_mention",
                                                    "bold", "no_such_type")),
                                "offset": rng.choice((-5, 0, 3, 9999)),
                                "length": rng.choice((-1, 0, 4, 10**6))}]
        return {"message": message}
    return {"message": _tg_message(dm, dm, message_id, "hi" + rng.choice(SURROGATES), world)}


def _poll(n: int, complete: bool) -> Json:
    """A poll update; without `allows_revoting` (and `members_only`) unless `complete`."""
    poll: Json = {"id": str(n), "question": "Tea or coffee?", "total_voter_count": 0,
                  "options": [{"text": "tea", "voter_count": 0, "persistent_id": "a"},
                              {"text": "coffee", "voter_count": 0, "persistent_id": "b"}],
                  "is_closed": False, "is_anonymous": True, "type": "regular",
                  "allows_multiple_answers": False}
    if complete:
        poll |= {"allows_revoting": True, "members_only": False}
    return poll


def telegram_valid(k: int, world: TelegramWorld = TelegramWorld()) -> Json:
    """The k-th valid message: a DM (even k) or a group mention (odd k), in a chat of its own."""
    if k % 2 == 0:
        chat = VALID_DM_BASE + k
        return {"message": _tg_message(chat, chat, 1, f"valid message {k}", world)}
    chat = VALID_GROUP_BASE - k
    return {"message": _tg_message(chat, VALID_DM_BASE + k, 1,
                                   f"@{world.bot_username} valid message {k}", world)}


def telegram_updates(seed: int, count: int, *, valid_every: int = 0,
                     world: TelegramWorld = TelegramWorld(), huge: int = 1_000_000
                     ) -> Iterator[tuple[bool, Json]]:
    """`count` mutated Telegram updates (no update_id), a valid one after every `valid_every`.

    `huge` bounds the length of the longest string made.
    """
    rng = random.Random(seed)

    def mutated(n: int) -> Json:
        update = _tg_template(rng, n, world, huge)
        # A few are sent as made: a payload that is wrong in itself (an empty message, a poll
        # without allows_revoting, a lone surrogate) needs no further damage.
        return update if rng.random() < 0.2 else _mutate(rng, update, huge)

    return _interleaved(rng, count, valid_every, mutated, lambda k: telegram_valid(k, world))


# ---- Discord ------------------------------------------------------------------------------------

def _snowflake(rng: random.Random) -> int:
    ms = 1_760_000_000_000 - DISCORD_EPOCH_MS + rng.randrange(10**9)
    return (ms << 22) | rng.randrange(1 << 22)


def _dc_user(user_id: int, name: str = "fuzz", bot: bool = False) -> Json:
    return {"id": str(user_id), "username": name, "discriminator": "0", "global_name": name,
            "avatar": None, "bot": bot, "public_flags": 0}


def _dc_member() -> Json:
    return {"roles": [], "joined_at": "2025-01-01T00:00:00+00:00", "deaf": False, "mute": False,
            "flags": 0, "pending": False, "nick": None, "avatar": None, "premium_since": None,
            "communication_disabled_until": None}


def _dc_message(message_id: int, channel_id: int, author_id: int, content: str,
                guild_id: int | None, mentions: list[Json]) -> Json:
    message: Json = {
        "id": str(message_id), "channel_id": str(channel_id), "type": 0, "content": content,
        "author": _dc_user(author_id), "timestamp": "2025-10-01T12:00:00.000000+00:00",
        "edited_timestamp": None, "tts": False, "mention_everyone": False, "mentions": mentions,
        "mention_roles": [], "attachments": [], "embeds": [], "components": [],
        "pinned": False, "flags": 0}
    if guild_id is not None:
        message["guild_id"] = str(guild_id)
        message["member"] = _dc_member()
    return message


def _bot_mention(world: DiscordWorld) -> Json:
    return {**_dc_user(world.bot_id, world.bot_name, bot=True), "member": _dc_member()}


def _dc_template(rng: random.Random, n: int, world: DiscordWorld) -> tuple[str, Any]:
    author = 600_000_000_000_000_000 + rng.randrange(200)
    message_id = _snowflake(rng)
    guild = world.guild_id
    kind = rng.randrange(20)
    if kind <= 4:
        content = rng.choice((f"<@{world.bot_id}> fuzz {n}", "chatter", "", f"<@!{world.bot_id}>"))
        mentions = [_bot_mention(world)] if str(world.bot_id) in content else []
        return "MESSAGE_CREATE", _dc_message(message_id, world.channel_id, author, content,
                                             guild, mentions)
    if kind <= 6:
        if world.fuzz_dm_channels:
            author, channel = rng.choice(world.fuzz_dm_channels)
        else:
            channel = _snowflake(rng)
        return "MESSAGE_CREATE", _dc_message(message_id, channel, author,
                                             rng.choice(("hi", "/new", "")), None, [])
    if kind == 7:
        message = _dc_message(message_id, world.channel_id, author, "see this", guild, [])
        message["type"] = 19
        message["message_reference"] = {"message_id": str(_snowflake(rng)),
                                        "channel_id": str(world.channel_id),
                                        "guild_id": str(guild)}
        message["referenced_message"] = None
        return "MESSAGE_CREATE", message
    if kind == 8:
        message = _dc_message(message_id, world.channel_id, author, "", guild, [])
        message["attachments"] = [{"id": str(_snowflake(rng)), "filename": "voice-message.ogg",
                                   "size": 10, "url": "http://127.0.0.1:9/x.ogg",
                                   "proxy_url": "http://127.0.0.1:9/x.ogg",
                                   "content_type": "audio/ogg", "duration_secs": 1.0,
                                   "waveform": "AAAA"}]
        message["flags"] = 1 << 13
        return "MESSAGE_CREATE", message
    if kind == 9:
        message = _dc_message(message_id, world.channel_id, author, "edited", guild, [])
        message["edited_timestamp"] = "2025-10-01T12:01:00.000000+00:00"
        return "MESSAGE_UPDATE", message
    if kind == 10:
        return "MESSAGE_DELETE", {"v": "0"}
    if kind == 11:
        return "MESSAGE_DELETE", {"id": str(message_id), "channel_id": str(world.channel_id),
                                  "guild_id": str(guild)}
    if kind == 12:
        return "MESSAGE_DELETE_BULK", {"ids": [str(_snowflake(rng)) for _ in range(3)],
                                       "channel_id": str(world.channel_id),
                                       "guild_id": str(guild)}
    if kind == 13:
        return "MESSAGE_REACTION_ADD", {
            "user_id": str(author), "channel_id": str(world.channel_id),
            "message_id": str(message_id), "guild_id": str(guild),
            "emoji": {"id": None, "name": "👍"}, "burst": False, "type": 0}
    if kind == 14:
        return "TYPING_START", {"channel_id": str(world.channel_id), "guild_id": str(guild),
                                "user_id": str(author), "timestamp": DATE,
                                "member": {**_dc_member(), "user": _dc_user(author)}}
    if kind == 15:
        return "PRESENCE_UPDATE", {"user": {"id": str(author)}, "guild_id": str(guild),
                                   "status": "online", "activities": [],
                                   "client_status": {"desktop": "online"}}
    if kind == 16:
        return "THREAD_CREATE", {
            "id": str(_snowflake(rng)), "type": 11, "name": "fuzz", "guild_id": str(guild),
            "parent_id": str(world.channel_id), "owner_id": str(author),
            "last_message_id": None, "rate_limit_per_user": 0, "flags": 0,
            "message_count": 0, "member_count": 1, "newly_created": True,
            "thread_metadata": {"archived": False, "auto_archive_duration": 1440,
                                "archive_timestamp": "2025-10-01T12:00:00+00:00",
                                "locked": False}}
    if kind == 17:
        return "INTERACTION_CREATE", {"id": str(message_id), "application_id": str(world.bot_id),
                                      "type": 2, "token": "t", "version": 1,
                                      "data": {"id": "1", "name": "cmd", "type": 1}}
    if kind == 18:
        return rng.choice(("HEARTH_UNKNOWN_EVENT", "SOME_FUTURE_EVENT", "")), {"x": n}
    # A dispatch whose data is not an object at all.
    return rng.choice(("MESSAGE_CREATE", "MESSAGE_DELETE", "TYPING_START")), rng.choice(
        (None, [], "d", 0, [{"id": "1"}]))


def discord_valid(k: int, world: DiscordWorld = DiscordWorld()) -> Json:
    """The k-th valid message as a MESSAGE_CREATE frame: a DM in the next of
    `world.dm_channels` (even k, when there are any), else a guild message mentioning the bot."""
    message_id = (1_760_000_000_000 - DISCORD_EPOCH_MS) << 22 | (1 << 21) | k
    if k % 2 == 0 and world.dm_channels:
        user, channel = world.dm_channels[(k // 2) % len(world.dm_channels)]
        data = _dc_message(message_id, channel, user, f"valid message {k}", None, [])
    else:
        data = _dc_message(message_id, world.channel_id, 700_000_000_000_000_000 + k,
                           f"<@{world.bot_id}> valid message {k}", world.guild_id,
                           [_bot_mention(world)])
    return {"op": 0, "t": "MESSAGE_CREATE", "d": data}


def discord_dispatches(seed: int, count: int, *, valid_every: int = 0,
                       world: DiscordWorld = DiscordWorld(), huge: int = 1_000_000
                       ) -> Iterator[tuple[bool, Json]]:
    """`count` malformed gateway dispatches `{"op": 0, "t": ..., "d": ...}` (no sequence
    number: the sender numbers them), a valid MESSAGE_CREATE after every `valid_every`."""
    rng = random.Random(seed)

    def mutated(n: int) -> Json:
        event, data = _dc_template(rng, n, world)
        frame: Json = {"op": 0, "t": event, "d": data}
        if isinstance(data, dict) and rng.random() >= 0.2:
            _mutate(rng, data, huge)
        return frame

    return _interleaved(rng, count, valid_every, mutated, lambda k: discord_valid(k, world))
