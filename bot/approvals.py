"""Asking the owner: a call to a tool the persona lists under `tools.ask` runs only when the
owner says yes, in their own DM on the platform the call came from.

The gate calls `Approvals.approve` (its `Approver`). That finds the owner of the request's
platform in the binding table — the peer of a DM binding to an admin persona — and hands the
question to the asker the running adapter registered for that platform. The asker puts the
question to the owner and returns their answer; it alone knows how (buttons, a y/n prompt).
No owner bound on that platform, no asker registered, or an asker that fails: the answer is
no, and the log says why.

The core knows no platform: adapters register a coroutine function with `asking`, and the
question they get is plain data.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

from bot.store import Store
from bot.store.bindings import Binding, list_bindings
from bot.tools import ApprovalRequest

log = logging.getLogger(__name__)

APPROVAL_SECONDS = 120.0
# The gate's own limit on asking is this much longer than the owner's time to answer: the
# asker times the owner and says so in the chat; the gate's limit only catches an asker that
# hangs.
ASKER_GRACE_SECONDS = 10.0
ARGUMENTS_SHOWN = 300


@dataclass(frozen=True)
class Question:
    """One approval to ask for: whom (the owner's peer id on the platform, which is also
    their DM), what (the request; its arguments are already masked), and how long they have.

    The asker returns True only for an explicit yes from that owner; no, and no answer within
    `seconds`, are False. Cancelled, it closes the question in the chat before it lets go.
    """

    owner: str
    request: ApprovalRequest
    seconds: float

    @property
    def arguments(self) -> str:
        """The masked arguments as short JSON, for one line of a chat message."""
        return shorten(json.dumps(self.request.arguments, ensure_ascii=False, default=repr),
                       ARGUMENTS_SHOWN)

    @property
    def origin(self) -> str:
        """Who made the call: the persona and the chat it answered."""
        return (f"the {self.request.persona} persona in {self.request.platform} chat "
                f"{self.request.chat_id}")


Asker = Callable[[Question], Awaitable[bool]]


def shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


class Approvals:
    """The registry of askers, one per platform, and the `Approver` the gate calls."""

    def __init__(self, store: Store, roles: Mapping[str, str], *,
                 seconds: float = APPROVAL_SECONDS) -> None:
        self.store = store
        self.seconds = seconds
        self._roles = dict(roles)
        # The newest registration per platform answers; each is removed by its own key, so a
        # restarted adapter (or a chat inside a chat) never removes another's.
        self._askers: dict[str, dict[int, Asker]] = {}
        self._keys = itertools.count()

    @contextmanager
    def asking(self, platform: str, asker: Asker) -> Iterator[None]:
        """While inside, questions for `platform` go to `asker`."""
        key = next(self._keys)
        self._askers.setdefault(platform, {})[key] = asker
        try:
            yield
        finally:
            registered = self._askers.get(platform, {})
            registered.pop(key, None)
            if not registered:
                self._askers.pop(platform, None)

    def asker(self, platform: str) -> Asker | None:
        registered = self._askers.get(platform)
        return registered[max(registered)] if registered else None

    async def owner(self, platform: str, chat_id: str | None = None) -> str | None:
        """The owner's peer id on `platform`: a DM binding to an admin persona names them.
        With several, the one whose DM the request came from, else the oldest binding."""
        owners = [b for b in await list_bindings(self.store, platform) if self._is_owner(b)]
        if not owners:
            return None
        here = next((b for b in owners if b.peer_id == chat_id), None)
        chosen = here or owners[0]
        assert chosen.peer_id is not None
        return chosen.peer_id

    def _is_owner(self, binding: Binding) -> bool:
        peer = (binding.peer_id or "").strip()
        return (self._roles.get(binding.persona) == "admin" and binding.chat_kind == "dm"
                and peer not in ("", "*"))

    async def approve(self, request: ApprovalRequest) -> bool:
        """Ask the owner on the request's platform; anything but their yes is no."""
        platform = request.platform
        owner = await self.owner(platform, request.chat_id)
        if owner is None:
            log.warning("%s call from %s chat %s refused: no owner is bound on %s to ask",
                        request.tool, platform, request.chat_id, platform)
            return False
        asker = self.asker(platform)
        if asker is None:
            log.warning("%s call from %s chat %s refused: there is no way to ask the owner on "
                        "%s right now", request.tool, platform, request.chat_id, platform)
            return False
        log.info("asking the owner on %s to approve %s for %s chat %s", platform,
                 request.tool, platform, request.chat_id)
        try:
            approved = await asker(Question(owner, request, self.seconds)) is True
        except Exception:
            log.exception("asking the owner on %s to approve %s failed; treated as no",
                          platform, request.tool)
            return False
        log.info("the owner %s the %s call from %s chat %s",
                 "approved" if approved else "did not approve", request.tool, platform,
                 request.chat_id)
        return approved
