"""Config: zero-config defaults, strict validation with key paths, secrets masked."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from bot.config import BUNDLED_MODEL_ID, load_config, masked_dict, parse_config
from bot.errors import ConfigError
from bot.logs import redact, setup_logging

GOOD = {
    "gateway": {
        "providers": {
            "ollama": {"type": "ollama", "base_url": "http://127.0.0.1:11434",
                       "models": [{"id": "qwen3:8b", "context_window": 32768}]},
        }
    },
    "agents": {
        "default": {"active_model": "ollama/qwen3:8b",
                    "model_registry": {"ollama/qwen3:8b": {"alias": "fast"}}},
        "instances": {
            "admin": {"role": "admin", "model": "fast"},
            "guest": {"role": "guest", "tools": {"deny": ["shell_exec"]}},
        },
        "bindings": [{"persona": "admin", "platform": "telegram", "chat_kind": "dm",
                      "peer": "42"}],
    },
    "channels": {"telegram": {"token": "${TEST_TG_TOKEN}"}},
}


def test_no_config_file_means_bundled_model_and_sqlite() -> None:
    config = load_config(None)
    provider_name, provider, model = config.resolve_model(None)
    assert (provider_name, provider.type) == ("local", "embedded")
    assert model.id == BUNDLED_MODEL_ID and model.path is None
    assert config.store_url().startswith("sqlite+aiosqlite:///")
    assert set(config.agents.instances) == {"admin", "guest"}
    assert config.store.history_days == 90


def test_aliases_resolve_and_env_references_expand(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_TG_TOKEN", "123:secret-token")
    config = parse_config(GOOD)
    assert config.resolve_model("fast")[2].id == "qwen3:8b"
    assert config.channels.telegram is not None
    assert config.channels.telegram.token == "123:secret-token"


@pytest.mark.parametrize(
    ("mutate", "path", "expected"),
    [
        (lambda c: c["gateway"].update(colour="blue"), "gateway.colour", "unknown key"),
        (lambda c: c["gateway"]["providers"]["ollama"]["models"][0].update(context_window="big"),
         "gateway.providers.ollama.models[0].context_window", "expected an integer"),
        (lambda c: c["agents"]["default"].update(active_model="ollama/nope"),
         "agents.default.active_model", "names no configured model"),
        (lambda c: c["agents"]["instances"]["admin"].update(model="missing/model"),
         "agents.instances.admin.model", "names no configured model"),
        (lambda c: c["agents"]["bindings"][0].update(persona="root"),
         "agents.bindings[0].persona", "is not an instance"),
        (lambda c: c["gateway"]["providers"]["ollama"].update(type="gpt"),
         "gateway.providers.ollama.type", "expected 'ollama' or 'openai-compat' or 'embedded'"),
        (lambda c: c["gateway"]["providers"]["ollama"]["models"][0].pop("id"),
         "gateway.providers.ollama.models[0].id", "required key is missing"),
        (lambda c: c["channels"]["telegram"].update(enabled="yes"),
         "channels.telegram.enabled", "expected true or false"),
        (lambda c: c.update(store={"history_days": -1}), "store.history_days", "0 or more"),
        (lambda c: c.update(store={"history_days": 1.5}), "store.history_days",
         "expected an integer"),
    ],
)
def test_errors_name_the_key_path(mutate: object, path: str, expected: str,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_TG_TOKEN", "x")
    raw = json.loads(json.dumps(GOOD))
    mutate(raw)  # type: ignore[operator]
    with pytest.raises(ConfigError) as caught:
        parse_config(raw)
    assert caught.value.path == path
    assert expected in str(caught.value)


def test_missing_environment_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEST_TG_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="TEST_TG_TOKEN is not set") as caught:
        parse_config(GOOD)
    assert caught.value.path == "channels.telegram.token"


def test_invalid_json_says_where(tmp_path: Path) -> None:
    bad = tmp_path / "config.json"
    bad.write_text('{"gateway": {,}}')
    with pytest.raises(ConfigError, match=r"not valid JSON \(line 1, column 14"):
        load_config(bad)


def test_secrets_are_masked_and_listed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_TG_TOKEN", "123:secret-token")
    config = parse_config(GOOD)
    shown = json.dumps(masked_dict(config))
    assert "secret-token" not in shown
    assert masked_dict(config)["channels"]["telegram"]["token"] == "********"
    assert config.secrets() == ["123:secret-token"]


@pytest.fixture
def real_logging() -> Iterator[None]:
    """Lets a test call setup_logging, then puts the process's logging back as it was."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    noisy = {name: logging.getLogger(name).level
             for name in ("httpx", "httpcore", "aiosqlite", "alembic")}
    yield
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, noisy_level in noisy.items():
        logging.getLogger(name).setLevel(noisy_level)


TOKEN = "424242:AAF-secret_token"


@pytest.mark.parametrize("source", ["file", "substitution", "environment"])
def test_a_token_with_whitespace_around_it_reaches_no_log_line(
        source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        real_logging: None) -> None:
    padded = f" {TOKEN}\n"
    if source == "file":
        channel: dict[str, object] = {"token": padded}
    elif source == "substitution":
        monkeypatch.setenv("TEST_TG_TOKEN", padded)
        channel = {"token": "${TEST_TG_TOKEN}"}
    else:
        monkeypatch.setenv("TELEGRAM_BOT_TOKEN", padded)
        channel = {}
    config = parse_config({"channels": {"telegram": channel}})
    setup_logging("debug", config.secrets(), tmp_path / "logs", to_stderr=False)
    encoded = quote(TOKEN, safe="")
    assert encoded != TOKEN  # the ":" is escaped: the case HTTP clients produce
    # What the adapter sends (the stripped token) as the HTTP client logs it, both ways.
    logging.getLogger("httpx").debug("HTTP Request: POST https://api.telegram.org/bot%s/getMe",
                                     TOKEN)
    logging.getLogger("httpx").debug("HTTP Request: GET https://relay.example/?token=%s",
                                     encoded)
    logging.getLogger("hearthbot").debug("configured token %r", padded)
    for handler in logging.getLogger().handlers:
        handler.flush()
    written = (tmp_path / "logs" / "hearthbot.log").read_text()
    assert written.count("[redacted]") == 3, written
    for leaked in (TOKEN, encoded, "secret_token", "AAF-secret"):
        assert leaked not in written


def test_redaction_leaves_no_fragment_of_nested_or_overlapping_secrets() -> None:
    inner, outer = "abc123def", "xx-abc123def-yy"
    assert redact(f"a {outer} b {inner} c", [inner, outer]) == "a [redacted] b [redacted] c"
    assert redact(f"a {outer} b", [outer, inner]) == "a [redacted] b"
    # Two secrets sharing characters: neither one's tail survives the other's redaction.
    assert redact("<abcdefghijkl>", ["abcdefgh", "efghijkl"]) == "<[redacted]>"
    assert redact("aaaaaaa", ["aaaaaa"]) == "[redacted]"
    assert redact("nothing here", ["abcdefgh"]) == "nothing here"


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ({"gateway": {"colour": "blue"}}, "gateway.colour"),
        ({"gateway": {"port": "eighty"}}, "gateway.port"),
        ({"agents": {"default": {"active_model": "local/missing"}}}, "agents.default.active_model"),
        ({"agents": {"bindings": [{"persona": "admin", "platform": "telegram",
                                   "chat_kind": "dm", "peer": "*"}]}}, "agents.bindings[0]"),
    ],
)
def test_cli_config_errors_are_one_line_and_exit_2(tmp_path: Path, change: dict[str, object],
                                                   path: str, cli_env: dict[str, str]) -> None:
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(change))
    for argv in (["config", "check", str(config_file)],
                 ["--config", str(config_file), "chat", "--once", "hi"]):
        done = subprocess.run([sys.executable, "-m", "bot.cli", *argv], capture_output=True,
                              text=True, env=cli_env, timeout=60)
        assert done.returncode == 2
        assert done.stdout == ""
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert path in lines[0]


ADMIN_WITHOUT_A_NAMED_PEER = [
    {"persona": "admin", "platform": "telegram", "chat_kind": "dm"},
    {"persona": "admin", "platform": "telegram", "chat_kind": "dm", "peer": "*"},
    {"persona": "admin", "platform": "telegram", "chat_kind": "dm", "peer": "${EMPTY_ID}"},
    {"persona": "admin", "platform": "telegram", "peer": "42"},
    {"persona": "admin", "platform": "discord", "chat_kind": "group", "peer": "42"},
    {"persona": "admin", "platform": "discord", "group": "9"},
]


@pytest.mark.parametrize("binding", ADMIN_WITHOUT_A_NAMED_PEER)
def test_admin_binding_needs_a_dm_with_a_named_peer(binding: dict[str, str], tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMPTY_ID", "")
    guest = {"persona": "guest", "platform": "telegram"}  # a wildcard is fine for a guest
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps({"agents": {"bindings": [guest, binding]}}))
    with pytest.raises(ConfigError) as caught:
        load_config(config_file)
    assert caught.value.path == "agents.bindings[1]"
    assert "only granted in a DM with one named person" in str(caught.value)


def test_config_check_refuses_a_wildcard_admin_in_one_sentence(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bot.cli import main

    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps({"agents": {"bindings": [
        {"persona": "admin", "platform": "telegram", "chat_kind": "dm", "peer": "*"}]}}))
    assert main(["config", "check", str(config_file)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == ("hearthbot: config error at agents.bindings[0]: persona 'admin' has the admin "
                   "role, which is only granted in a DM with one named person: set chat_kind "
                   "\"dm\" and the peer's id (not \"*\")\n")


def test_cli_config_check_prints_effective_config_masked(
        tmp_path: Path, cli_env: dict[str, str]) -> None:
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps({"channels": {"discord": {"token": "${DC}"}}}))
    env = {**cli_env, "DC": "discord-secret-value"}
    done = subprocess.run([sys.executable, "-m", "bot.cli", "config", "check", str(config_file)],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert shown["channels"]["discord"]["token"] == "********"
    assert "discord-secret-value" not in done.stdout + done.stderr
    assert shown["agents"]["default"]["active_model"] == f"local/{BUNDLED_MODEL_ID}"


def test_the_example_config_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HEARTHBOT_OWNER_TELEGRAM_ID", "TELEGRAM_BOT_TOKEN", "DISCORD_BOT_TOKEN"):
        monkeypatch.setenv(name, "12345678")
    example = Path(__file__).resolve().parents[1] / "deploy" / "hearthbot.example.json"
    config = load_config(example)
    assert config.resolve_model("fast")[0] == "mlx"
    assert config.channels_enabled == ("telegram", "discord")


def test_environment_tokens_are_redacted_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", "555:from-the-environment")
    config = parse_config({"channels": {"telegram": {}}})
    assert "555:from-the-environment" in config.secrets()
