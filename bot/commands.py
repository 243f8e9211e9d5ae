"""Chat commands: one table, from which the gateway runs them and the platforms' command menus
and `/help` are built.

A command is a name, a line of help, who may use it, and a handler that returns the reply text.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from bot.errors import ModelDoesNotFit, ProviderError
from bot.events import InboundEvent
from bot.model_host import ModelHost
from bot.pairing import redeem
from bot.store import Store
from bot.store.history import start_new_session
from bot.summaries import ChatContext
from persona import Persona

ANYONE = frozenset({"admin", "guest"})
OWNER = frozenset({"admin"})


class ThoughtLines:
    """The chats whose owner asked (/think on) to see how long the model thought.

    Kept in memory: a restart turns the line off again everywhere, which costs the owner one
    command; keeping it would need a column in the store, and the line is a convenience.
    """

    def __init__(self) -> None:
        self._chats: set[tuple[str, str]] = set()

    def shown(self, event: InboundEvent) -> bool:
        return (event.platform, event.chat_id) in self._chats

    def show(self, event: InboundEvent, on: bool) -> None:
        key = (event.platform, event.chat_id)
        if on:
            self._chats.add(key)
        else:
            self._chats.discard(key)


@dataclass(frozen=True)
class CommandCall:
    """What a handler may use: the asking event, the persona the router chose, the store, and
    the chat's conversation with that persona as the context guard sees it."""

    event: InboundEvent
    argument: str
    persona: Persona
    store: Store
    admin_persona: str | None
    models: ModelHost | None = None
    context: ChatContext | None = None
    thought_lines: ThoughtLines = field(default_factory=ThoughtLines)


Handler = Callable[[CommandCall], Awaitable[str]]


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    handler: Handler
    # The persona roles that may run it; everyone else is told it is not available to them.
    roles: frozenset[str] = ANYONE
    # Listed in the platform menus and /help (a command like /start that every Telegram client
    # sends by itself need not be advertised).
    listed: bool = True


async def _start(call: CommandCall) -> str:
    return "Hello! Send me a message and I'll answer. " + _help_line(call.persona.role)


async def _help(call: CommandCall) -> str:
    return _help_line(call.persona.role)


async def _new(call: CommandCall) -> str:
    await start_new_session(call.store, call.event.platform, call.event.chat_id,
                            call.persona.name)
    return "Started a fresh conversation."


async def _compact(call: CommandCall) -> str:
    if call.context is None:
        return "Compacting is not available here."
    return await call.context.compact()


async def _context(call: CommandCall) -> str:
    if call.context is None:
        return "The context window cannot be shown here."
    return await call.context.describe()


async def _whoami(call: CommandCall) -> str:
    return f"You are talking to the {call.persona.name} persona ({call.persona.role})."


async def _pair(call: CommandCall) -> str:
    if call.admin_persona is None:
        return "Pairing is not available: no admin persona is configured."
    result = await redeem(call.store, call.event, call.argument, call.admin_persona)
    return result.message


async def _model(call: CommandCall) -> str:
    host = call.models
    if host is None:
        return "Switching models is not available here."
    if not call.argument:
        return model_list(host)
    return (await switch_model(host, call.argument))[1]


async def _think(call: CommandCall) -> str:
    word = call.argument.lower()
    if word not in ("on", "off"):
        state = "on" if call.thought_lines.shown(call.event) else "off"
        return (f"The thinking-time line is {state} in this chat. /think on shows how long "
                f"the model thought under each reply; /think off hides it. The thoughts "
                f"themselves are never shown; they are kept in the turn's record.")
    call.thought_lines.show(call.event, word == "on")
    if word == "on":
        return "From now on, a reply the model thought over ends with how long it thought."
    return "Replies no longer say how long the model thought."


async def switch_model(host: ModelHost, name: str) -> tuple[bool, str]:
    """Make `name` the active model; whether it worked, and the sentence that says so.
    Shared by /model and `hearthbot model use`."""
    try:
        if host.label(name) == host.state.active == host.state.resident:
            return True, f"{_named(host, host.state.active)} is already the active model."
        seconds = await host.switch(name)
    except ModelDoesNotFit as exc:
        return False, f"{exc}; {_named(host, host.state.active)} stays active."
    except ProviderError as exc:
        if exc.user_message == str(exc):  # an unknown name: the sentence says it all
            return False, exc.user_message
        return False, (f"Could not load {name}: {exc.user_message} "
                       f"{_named(host, host.state.active)} stays active.")
    return True, (f"Switched to {_named(host, host.state.active)}, loaded in {seconds:.1f} s."
                  + _pinned_note(host))


def model_list(host: ModelHost) -> str:
    """The registry, the active model marked; shared by /model and `hearthbot model`."""
    lines = ["Models:"]
    for line in host.registry():
        marks = [word for word, on in (("active", line.active), ("loaded", line.resident))
                 if on]
        name = f"{line.alias}: " if line.alias else ""
        lines.append(f"- {name}{line.name}, `{line.label}`"
                     + (f" ({', '.join(marks)})" if marks else ""))
    lines.append("Switch with /model NAME.")
    return "\n".join(lines)


def _named(host: ModelHost, label: str) -> str:
    alias = next((line.alias for line in host.registry() if line.label == label), None)
    return f"{alias} (`{label}`)" if alias else f"`{label}`"


def _pinned_note(host: ModelHost) -> str:
    others = {persona: label for persona, label in host.pinned().items()
              if label != host.state.active}
    if not others:
        return ""
    listed = ", ".join(f"{persona} uses `{label}`" for persona, label in sorted(others.items()))
    return (f" Personas that name their own model still switch to it for their turns "
            f"({listed}).")


COMMANDS: tuple[Command, ...] = (
    Command("new", "start a fresh conversation", _new),
    Command("compact", "fold the older turns into the summary now", _compact),
    Command("context", "show how full the model's context window is", _context),
    Command("whoami", "say which persona answers you", _whoami),
    Command("pair", "pair this DM with the owner's code from `hearthbot pair`", _pair),
    Command("model", "list the models, or switch to another: /model NAME", _model,
            roles=OWNER),
    Command("think", "show how long the model thought under each reply: /think on|off",
            _think, roles=OWNER),
    Command("help", "list the commands", _help),
    Command("start", "say hello", _start, listed=False),
)
_BY_NAME = {command.name: command for command in COMMANDS}


def listed(role: str | None = None) -> tuple[Command, ...]:
    """The commands to advertise, to everyone or to one persona role."""
    return tuple(c for c in COMMANDS if c.listed and (role is None or role in c.roles))


def _help_line(role: str) -> str:
    return "Commands: " + "; ".join(f"/{c.name} to {c.help}" for c in listed(role)) + "."


_COMMAND_NAME = re.compile(r"[a-z0-9_]{1,32}")


def parse(text: str) -> tuple[str, str] | None:
    """`/pair ABC` or `/pair@botname ABC` → ("pair", "ABC"); anything else is not a command."""
    if not text.startswith("/") or len(text) < 2 or text[1].isspace():
        return None
    word, _, argument = text[1:].partition(" ")
    name = word.split("@", 1)[0].lower()
    # "/usr/bin is missing" is a sentence, not a command.
    return (name, argument.strip()) if _COMMAND_NAME.fullmatch(name) else None


async def run(name: str, call: CommandCall) -> str:
    command = _BY_NAME.get(name)
    if command is None:
        return f"I don't know that command. {_help_line(call.persona.role)}"
    if call.persona.role not in command.roles:
        return f"/{name} is only available to the owner."
    return await command.handler(call)
