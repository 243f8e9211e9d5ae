"""Who is talking? The binding table decides which persona answers an event, failing closed."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from bot.events import ChatKind, InboundEvent
from bot.store.bindings import Binding

log = logging.getLogger(__name__)

FALLBACK_PERSONA = "guest"


@dataclass(frozen=True)
class Resolution:
    persona: str
    binding: Binding | None
    reason: str


def _matches(binding: Binding, event: InboundEvent) -> bool:
    if binding.platform != event.platform:
        return False
    pairs = ((binding.account, event.account), (binding.chat_kind, event.chat_kind.value),
             (binding.peer_id, event.sender_id))
    if not all(want is None or want == have for want, have in pairs):
        return False
    # A group binding names a whole group (a Telegram group, a Discord server) or one of its
    # channels.
    return binding.group_id is None or (
        event.group_id is not None and binding.group_id in (event.group_id, event.chat_id))


def specificity(binding: Binding) -> int:
    """A peer outranks a group, which outranks a chat kind, which outranks an account."""
    return ((binding.peer_id is not None) * 8 + (binding.group_id is not None) * 4
            + (binding.chat_kind is not None) * 2 + (binding.account is not None))


def resolve(event: InboundEvent, bindings: Iterable[Binding],
            roles: Mapping[str, str]) -> Resolution:
    """Pick the persona for an event.

    `roles` maps persona names to "admin" or "guest". Admin is granted only for a DM whose
    sender is named by the winning binding: never in a group, never through a wildcard.
    """
    candidates = [b for b in bindings if _matches(b, event)]
    if not candidates:
        return Resolution(FALLBACK_PERSONA, None, "no binding matches")
    # Ties go to the oldest row: an added binding cannot silently shadow an equal one.
    best = max(candidates, key=lambda b: (specificity(b), -b.id))
    role = roles.get(best.persona)
    if role is None:
        log.warning("binding %d names unknown persona %r; answering as guest", best.id,
                    best.persona)
        return Resolution(FALLBACK_PERSONA, best, "binding names an unknown persona")
    if role == "admin" and (event.chat_kind is not ChatKind.DM or best.peer_id is None):
        log.warning("binding %d would give %r admin rights outside a bound DM; refused",
                    best.id, best.persona)
        return Resolution(FALLBACK_PERSONA, best, "admin is only granted in a bound DM")
    return Resolution(best.persona, best, f"binding {best.id}")
