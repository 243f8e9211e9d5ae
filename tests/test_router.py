"""The binding table as a firewall: most specific wins, guest by default, admin in bound DMs."""

from __future__ import annotations

from bot.config import BindingSpec
from bot.events import ChatKind, InboundEvent
from bot.router import resolve
from bot.store import Store
from bot.store.bindings import Binding, add_binding, list_bindings, seed_bindings

ROLES = {"admin": "admin", "guest": "guest", "friends": "guest"}
OWNER = "1001"


def event(sender: str = OWNER, kind: ChatKind = ChatKind.DM, group: str | None = None,
          platform: str = "telegram") -> InboundEvent:
    chat = group if kind is ChatKind.GROUP and group else sender
    return InboundEvent(platform=platform, chat_id=chat, chat_kind=kind, sender_id=sender,
                        sender_name="someone", message_id="1", text="hi", group_id=group)


OWNER_DM = Binding(id=1, platform="telegram", persona="admin", chat_kind="dm", peer_id=OWNER)


def test_bound_owner_dm_gets_admin() -> None:
    assert resolve(event(), [OWNER_DM], ROLES).persona == "admin"


def test_owner_in_a_group_gets_guest() -> None:
    result = resolve(event(kind=ChatKind.GROUP, group="-500"), [OWNER_DM], ROLES)
    assert result.persona == "guest"


def test_owner_bound_without_chat_kind_still_guest_in_group() -> None:
    anywhere = Binding(id=1, platform="telegram", persona="admin", peer_id=OWNER)
    result = resolve(event(kind=ChatKind.GROUP, group="-500"), [anywhere], ROLES)
    assert result.persona == "guest"
    assert result.reason == "admin is only granted in a bound DM"


def test_unknown_dm_gets_guest() -> None:
    assert resolve(event(sender="2002"), [OWNER_DM], ROLES).persona == "guest"


def test_no_bindings_at_all_means_guest() -> None:
    result = resolve(event(), [], ROLES)
    assert (result.persona, result.binding) == ("guest", None)


def test_other_platform_does_not_match() -> None:
    assert resolve(event(platform="discord"), [OWNER_DM], ROLES).persona == "guest"


def test_wildcard_admin_binding_is_refused() -> None:
    every_dm = Binding(id=1, platform="telegram", persona="admin", chat_kind="dm")
    assert resolve(event(sender="2002"), [every_dm], ROLES).persona == "guest"


def test_most_specific_wins_regardless_of_order() -> None:
    rows = [
        Binding(id=1, platform="telegram", persona="friends", group_id="-500"),
        Binding(id=2, platform="telegram", persona="guest", group_id="-500", peer_id="3003"),
        Binding(id=3, platform="telegram", persona="friends", chat_kind="group"),
    ]
    in_group = event(sender="2002", kind=ChatKind.GROUP, group="-500")
    assert resolve(in_group, rows, ROLES).binding == rows[0]  # group beats chat kind
    peer_in_group = event(sender="3003", kind=ChatKind.GROUP, group="-500")
    assert resolve(peer_in_group, rows, ROLES).binding == rows[1]  # peer beats group
    other_group = event(sender="2002", kind=ChatKind.GROUP, group="-600")
    assert resolve(other_group, rows, ROLES).binding == rows[2]
    assert resolve(in_group, list(reversed(rows)), ROLES).binding == rows[0]


def test_equal_specificity_prefers_the_older_row() -> None:
    older = Binding(id=1, platform="telegram", persona="friends", chat_kind="dm")
    newer = Binding(id=2, platform="telegram", persona="guest", chat_kind="dm")
    assert resolve(event(sender="2002"), [newer, older], ROLES).binding == older


def test_unknown_persona_fails_closed() -> None:
    typo = Binding(id=1, platform="telegram", persona="amdin", chat_kind="dm", peer_id=OWNER)
    assert resolve(event(), [typo], ROLES).persona == "guest"


async def test_bindings_in_the_store_seed_idempotently(store: Store) -> None:
    specs = (BindingSpec(persona="admin", platform="telegram", chat_kind="dm", peer=OWNER),
             BindingSpec(persona="friends", platform="discord", group="777"))
    await seed_bindings(store, specs)
    await seed_bindings(store, specs)
    rows = [b for b in await list_bindings(store) if b.platform != "console"]
    assert [(b.platform, b.persona, b.source) for b in rows] == [
        ("telegram", "admin", "config"), ("discord", "friends", "config")]
    # Binding the same chats again changes the persona instead of adding a rival row.
    await add_binding(store, BindingSpec(persona="guest", platform="discord", group="777"))
    discord_rows = await list_bindings(store, "discord")
    assert [(b.id, b.persona) for b in discord_rows] == [(rows[1].id, "guest")]
    resolved = resolve(event(), await list_bindings(store, "telegram"), ROLES)
    assert resolved.persona == "admin"


def test_a_group_binding_can_name_a_channel_of_a_server() -> None:
    in_channel = InboundEvent(platform="discord", chat_id="555", chat_kind=ChatKind.GROUP,
                              sender_id="2002", sender_name="x", message_id="1", text="hi",
                              group_id="777")
    channel_row = Binding(id=1, platform="discord", persona="friends", group_id="555")
    server_row = Binding(id=2, platform="discord", persona="guest", group_id="777")
    assert resolve(in_channel, [channel_row], ROLES).persona == "friends"
    assert resolve(in_channel, [server_row], ROLES).binding == server_row
    other_channel = InboundEvent(platform="discord", chat_id="556", chat_kind=ChatKind.GROUP,
                                 sender_id="2002", sender_name="x", message_id="2", text="hi",
                                 group_id="777")
    assert resolve(other_channel, [channel_row], ROLES).binding is None
    a_dm = event(sender="2002", platform="discord")
    dm_with_same_id = InboundEvent(platform="discord", chat_id="555", chat_kind=ChatKind.DM,
                                   sender_id="2002", sender_name="x", message_id="3", text="hi")
    assert resolve(dm_with_same_id, [channel_row], ROLES).binding is None
    assert resolve(a_dm, [channel_row], ROLES).binding is None

