"""Tool policy: role defaults, allow / access / ask / deny from config, exact names only."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from bot.config import TOOL_NAMES, ToolPolicy, parse_config
from bot.errors import ConfigError
from persona import build_personas, tool_access

GUEST_DEFAULT = {"file_read", "knowledge_lookup", "code_interpreter_sandbox"}


def _config(tmp_path: Path, **instances: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"guest": {"role": "guest"}}
    base.update(instances)
    return {"data_dir": str(tmp_path), "agents": {"instances": base}}


def test_defaults_give_admin_all_six_and_guest_three(tmp_path: Path) -> None:
    personas = build_personas(parse_config({"data_dir": str(tmp_path)}))
    assert personas["admin"].tool_access.allowed == set(TOOL_NAMES)
    assert personas["guest"].tool_access.allowed == GUEST_DEFAULT
    assert not personas["admin"].tool_access.ask


def test_a_persona_whose_config_says_nothing_gets_its_role_default(tmp_path: Path) -> None:
    raw = _config(tmp_path, admin={"role": "admin"}, owner={"role": "admin"},
                  visitor={"role": "guest"})
    personas = build_personas(parse_config(raw))
    assert personas["owner"].tool_access.allowed == set(TOOL_NAMES)
    assert personas["visitor"].tool_access.allowed == GUEST_DEFAULT


def test_allow_names_exactly_what_is_callable(tmp_path: Path) -> None:
    raw = _config(tmp_path, admin={"role": "admin", "tools": {"allow": ["file_read"]}},
                  mute={"role": "admin", "tools": {"allow": []}})
    personas = build_personas(parse_config(raw))
    assert personas["admin"].tool_access.allowed == {"file_read"}
    assert personas["mute"].tool_access.allowed == set()


def test_deny_wins_over_allow_access_and_ask() -> None:
    everything = ToolPolicy(access="full", ask=("shell_exec",), deny=("shell_exec",))
    access = tool_access("admin", everything)
    assert "shell_exec" not in access.allowed
    assert not access.needs_approval("shell_exec")
    listed = tool_access("guest", ToolPolicy(allow=("file_read", "external_fetch"),
                                             deny=("external_fetch",)))
    assert listed.allowed == {"file_read"}


def test_full_access_and_ask(tmp_path: Path) -> None:
    raw = _config(tmp_path, admin={"role": "admin", "tools": {"access": "full",
                                                                "ask": ["system_process"]}},
                  helper={"role": "guest", "tools": {"ask": ["external_fetch"]}})
    personas = build_personas(parse_config(raw))
    admin = personas["admin"].tool_access
    assert admin.allowed == set(TOOL_NAMES)
    assert admin.needs_approval("system_process") and not admin.needs_approval("file_read")
    helper = personas["helper"].tool_access
    assert helper.allowed == GUEST_DEFAULT | {"external_fetch"}
    assert helper.needs_approval("external_fetch")


def test_names_are_compared_exactly() -> None:
    access = tool_access("admin", ToolPolicy(access="full"))
    for near_miss in ("Shell_Exec", " shell_exec ", "shell_exec\n", "SHELL_EXEC", "shell-exec"):
        assert not access.permits(near_miss)


@pytest.mark.parametrize(
    ("tools", "path", "expected"),
    [
        ({"allow": ["file_read", "shell"]}, "agents.instances.admin.tools.allow[1]",
         "'shell' is not a tool"),
        ({"deny": ["Shell_Exec"]}, "agents.instances.admin.tools.deny[0]",
         "'Shell_Exec' is not a tool"),
        ({"ask": [" shell_exec "]}, "agents.instances.admin.tools.ask[0]", "is not a tool"),
        ({"access": "all"}, "agents.instances.admin.tools.access", "expected 'full'"),
        ({"access": "full", "allow": ["file_read"]}, "agents.instances.admin.tools.access",
         "not both"),
        ({"allow": "file_read"}, "agents.instances.admin.tools.allow", "expected a list"),
        ({"permit": ["file_read"]}, "agents.instances.admin.tools.permit", "unknown key"),
    ],
)
def test_bad_tool_policy_is_a_config_error_naming_the_key(
    tmp_path: Path, tools: dict[str, Any], path: str, expected: str
) -> None:
    raw = _config(tmp_path, admin={"role": "admin", "tools": tools})
    with pytest.raises(ConfigError) as caught:
        parse_config(copy.deepcopy(raw))
    assert caught.value.path == path
    assert expected in caught.value.problem


def test_the_example_config_loads_with_its_tool_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    from bot.config import load_config

    monkeypatch.setenv("HEARTHBOT_OWNER_TELEGRAM_ID", "1")
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", "1:x")
    monkeypatch.setenv("DISCORD_BOT_TOKEN", "x")
    example = Path(__file__).resolve().parents[1] / "deploy" / "hearthbot.example.json"
    personas = build_personas(load_config(example))
    assert personas["admin"].tool_access.allowed == set(TOOL_NAMES)
    assert personas["admin"].tool_access.needs_approval("system_process")
    assert personas["guest"].tool_access.allowed == GUEST_DEFAULT
