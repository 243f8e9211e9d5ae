"""The lifecycle commands against a real running service: `hearthbot status`, `model use`,
`warm`, and `service install|uninstall|status` writing units for this installation."""

from __future__ import annotations

import json
import os
import plistlib
import shutil
import socket
import stat
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot import control
from tests.fakes.llm_backends import FakeOllama
from tests.fakes.telegram import FakeTelegram
from tests.support.cli import BIG, SMALL, hearthbot, hearthbot_run, two_model_config
from tests.support.helpers import until
from tests.support.telegram import STRANGER, texts


@pytest.fixture
async def fake_two() -> AsyncIterator[FakeOllama]:
    async with FakeOllama((SMALL, BIG)) as fake:
        yield fake


@pytest.fixture
async def service(tmp_path: Path, fake_tg: FakeTelegram, fake_two: FakeOllama,
                  cli_env: dict[str, str], data_dir: Path) -> AsyncIterator[dict[str, str]]:
    """`hearthbot run` in its own process, serving Telegram; yields the CLI environment."""
    env = {**cli_env, "TELEGRAM_BOT_TOKEN": fake_tg.token,
           "HEARTHBOT_CONFIG": two_model_config(tmp_path, fake_two, fake_tg)}
    async with hearthbot_run(env, fake_tg, data_dir):
        yield env


async def test_status_switch_and_answer_against_the_running_service(
        service: dict[str, str], fake_tg: FakeTelegram, fake_two: FakeOllama,
        data_dir: Path) -> None:
    code, out, _ = await hearthbot("status", env=service)
    assert code == 0, out
    lines = dict(line.split(None, 1) for line in out.splitlines() if line.strip())
    assert lines["model"] == f"ollama/{SMALL}: resident"
    assert lines["adapters"] == "telegram connected, web connected"  # the web face too
    assert lines["inbox"] == "0 waiting"
    assert lines["last"] == "turn    none yet"
    assert lines["cold"].startswith("start   ")

    code, out, err = await hearthbot("model", "use", "big", env=service)
    assert code == 0, err
    assert out.startswith(f"Switched to big (`ollama/{BIG}`), loaded in ")
    assert fake_two.loaded == [BIG] and fake_two.peak_loaded == 1

    fake_tg.push_text(chat_id=STRANGER, from_id=STRANGER, text="which model?")
    await until(lambda: texts(fake_tg, STRANGER), "the reply", within=30)
    assert fake_two.chat_bodies()[-1]["model"] == BIG

    code, out, _ = await hearthbot("status", "--json", env=service)
    status = json.loads(out)
    assert status["active"] == status["resident"] == f"ollama/{BIG}"
    assert status["switches"] == 1
    assert status["last_turn"]["model"] == f"ollama/{BIG}"
    assert status["last_turn"]["first_token_seconds"] is not None

    code, out, err = await hearthbot("model", "use", "huge", env=service)
    assert code == 1 and out == ""
    assert err.strip() == "There is no model called 'huge'. Known: small, big."

    code, out, _ = await hearthbot("model", env=service)
    assert f"- big: {BIG}, `ollama/{BIG}` (active, loaded)" in out.splitlines()

    code, out, _ = await hearthbot("warm", env=service)
    assert code == 0 and out.strip().startswith(f"ollama/{BIG} is loaded and warm")


async def test_the_control_socket_is_private(service: dict[str, str], data_dir: Path) -> None:
    sock = control.socket_path(data_dir)
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600
    assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700
    assert stat.S_ISSOCK(sock.stat().st_mode)


async def test_status_without_a_service_says_so(cli_env: dict[str, str]) -> None:
    code, out, _ = await hearthbot("status", env=cli_env)
    assert code == 1
    assert out.startswith("hearthbot is not running")


def test_a_long_data_dir_gets_a_socket_path_that_fits(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 120)
    path = control.socket_path(deep)
    assert len(str(path)) <= control.MAX_SOCKET_PATH
    assert path != control.socket_path(tmp_path / ("e" * 120))
    with socket.socket(socket.AF_UNIX) as probe:  # the OS takes it
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        probe.bind(str(path))
    path.unlink()


async def test_warm_without_a_service_loads_the_model_with_keep_alive(
        tmp_path: Path, fake_two: FakeOllama, cli_env: dict[str, str]) -> None:
    code, out, err = await hearthbot("--config", two_model_config(tmp_path, fake_two), "warm",
                                     env=cli_env)
    assert code == 0, err
    assert out.startswith(f"ollama/{SMALL} is loaded and warm (")
    assert fake_two.loaded == [SMALL]
    assert fake_two.requests_to("/api/generate")[-1].body == {
        "model": SMALL, "prompt": "", "stream": False, "keep_alive": "24h"}


async def test_warm_with_the_backend_down_is_one_sentence_and_exit_1(
        tmp_path: Path, cli_env: dict[str, str]) -> None:
    gone = FakeOllama((SMALL,))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        gone.port = probe.getsockname()[1]
    code, out, err = await hearthbot("--config", two_model_config(tmp_path, gone, tries=3),
                                     "warm", env=cli_env)
    assert code == 1 and out == ""
    (line,) = err.splitlines()
    assert line.startswith(f"hearthbot: the model server for ollama/{SMALL} at "
                           f"{gone.base_url} did not answer after 3 tries over ")
    assert line.endswith(" s; start it (or check gateway.providers.ollama.base_url) and "
                         "hearthbot loads the model when it answers")


# --- service install --------------------------------------------------------------------------

def runnable(program: str) -> bool:
    return Path(program).is_file() and os.access(program, os.X_OK)


def systemd_verify(unit: Path) -> tuple[int, str]:
    done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                          text=True, check=False)
    return done.returncode, done.stdout + done.stderr


async def test_service_install_writes_a_unit_systemd_accepts(
        tmp_path: Path, fake_two: FakeOllama, cli_env: dict[str, str], data_dir: Path) -> None:
    units = tmp_path / "units"
    config = two_model_config(tmp_path, fake_two)
    code, out, err = await hearthbot("--config", config, "service", "install", "--kind",
                                     "systemd", "--unit-dir", str(units), "--no-load",
                                     env=cli_env)
    assert code == 0, out + err
    unit = (units / "hearthbot.service").read_text()
    fields = [line.split("=", 1) for line in unit.splitlines() if "=" in line
              and not line.startswith("#")]
    values: dict[str, list[str]] = {}
    for key, value in fields:
        values.setdefault(key, []).append(value)
    program = values["ExecStart"][0].split()
    assert runnable(program[0])
    assert program[-5:] == ["--config", config, "--data-dir", str(data_dir), "run"]
    path = next(v for v in values["Environment"] if v.startswith("PATH=") or
                v.startswith('"PATH='))
    assert str(Path(program[0]).parent) == path.strip('"')[5:].split(":")[0]
    assert values["Restart"] == ["on-failure"]
    assert values["WorkingDirectory"] == [str(data_dir)]
    assert values["StandardError"] == [f"append:{data_dir}/logs/service.log"]
    assert (data_dir / "logs").is_dir()
    if shutil.which("systemd-analyze"):
        assert "verified: systemd-analyze: no problems" in out
        assert systemd_verify(units / "hearthbot.service") == (0, "")
    else:
        assert "not verified: systemd-analyze is not available here" in out
    assert "not loaded (--no-load)" in out

    code, out, _ = await hearthbot("--config", config, "service", "status", "--kind",
                                   "systemd", "--unit-dir", str(units), "--no-load",
                                   env=cli_env)
    assert code == 0 and out.startswith(f"installed at {units / 'hearthbot.service'}\n")
    code, out, _ = await hearthbot("--config", config, "service", "uninstall", "--kind",
                                   "systemd", "--unit-dir", str(units), "--no-load",
                                   env=cli_env)
    assert code == 0 and not (units / "hearthbot.service").exists()


async def test_a_unit_systemd_rejects_is_reported(tmp_path: Path) -> None:
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze is not installed here")
    from bot.config import Config
    from bot.install import plan, verify, write

    install = plan(Config(data_dir=str(tmp_path / "data")), None, "systemd", tmp_path)
    write(install)
    install.unit_path.write_text(install.unit_path.read_text().replace(
        "Restart=on-failure", "Restart=sometimes"))
    verdict = verify(install)
    assert verdict.ok is False and "restart specifier" in verdict.text


async def test_service_install_writes_a_launch_agent(
        tmp_path: Path, cli_env: dict[str, str], data_dir: Path) -> None:
    agents = tmp_path / "LaunchAgents"
    code, out, err = await hearthbot("service", "install", "--kind", "launchd", "--unit-dir",
                                     str(agents), "--no-load", env=cli_env)
    assert code == 0, out + err
    agent = plistlib.loads((agents / "com.hearthbot.gateway.plist").read_bytes())
    assert agent["Label"] == "com.hearthbot.gateway"
    assert runnable(agent["ProgramArguments"][0])
    assert agent["ProgramArguments"][-3:] == ["--data-dir", str(data_dir), "run"]
    assert agent["EnvironmentVariables"]["PATH"].split(":")[0] == str(
        Path(agent["ProgramArguments"][0]).parent)
    assert agent["KeepAlive"] == {"SuccessfulExit": False}
    assert agent["StandardErrorPath"] == str(data_dir / "logs" / "service.log")
