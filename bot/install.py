"""`hearthbot service install|uninstall|status`: run hearthbot as a user service that starts at
login and restarts when it crashes, as a systemd user unit (Linux) or a launchd agent (macOS).

The unit is written for this installation's real paths: the `hearthbot` program of this
environment, the config file and data directory in use, and an explicit PATH (a service does
not inherit the login shell's). Nothing here needs root.
"""

from __future__ import annotations

import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from bot.config import Config

Kind = Literal["systemd", "launchd"]
UNIT_NAME = "hearthbot.service"
AGENT_LABEL = "com.hearthbot.gateway"
SYSTEM_PATH = ("/usr/local/bin", "/usr/bin", "/bin")
MAC_EXTRA_PATH = ("/opt/homebrew/bin",)
# Set in the unit: the service then logs only to its rotated file in the data directory, and
# the service manager's log file (service.log) keeps what escapes logging (a crash at start).
SERVICE_MARKER = "HEARTHBOT_UNDER_SERVICE_MANAGER"


@dataclass(frozen=True)
class Installation:
    kind: Kind
    unit_path: Path
    program: tuple[str, ...]  # how to run hearthbot: its console script, or python -m bot.cli
    config_path: Path | None
    data_dir: Path
    path_env: str
    stop_seconds: float

    @property
    def arguments(self) -> list[str]:
        args = list(self.program)
        if self.config_path is not None:
            args += ["--config", str(self.config_path)]
        return [*args, "--data-dir", str(self.data_dir), "run"]

    @property
    def log_file(self) -> Path:
        return self.data_dir / "logs" / "service.log"


def default_kind() -> Kind:
    return "launchd" if platform.system() == "Darwin" else "systemd"


def default_unit_dir(kind: Kind) -> Path:
    if named := os.environ.get("HEARTHBOT_UNIT_DIR"):
        return Path(named).expanduser()
    if kind == "launchd":
        return Path.home() / "Library" / "LaunchAgents"
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "systemd" / "user"


def this_program() -> tuple[str, ...]:
    """The `hearthbot` console script beside this Python, else `python -m bot.cli`."""
    script = Path(sys.executable).parent / "hearthbot"
    if script.is_file() and os.access(script, os.X_OK):
        return (str(script),)
    return (sys.executable, "-m", "bot.cli")


def service_path(program: tuple[str, ...]) -> str:
    """PATH for the service: this environment's bin folder first (model servers started from
    it, the ffmpeg it may ship), then wherever ffmpeg is, then the system's folders."""
    folders = [str(Path(program[0]).parent)]
    if ffmpeg := shutil.which("ffmpeg"):
        folders.append(str(Path(ffmpeg).parent))
    if platform.system() == "Darwin":
        folders += MAC_EXTRA_PATH
    folders += SYSTEM_PATH
    return ":".join(dict.fromkeys(folders))


def plan(config: Config, config_path: Path | None, kind: Kind | None = None,
         unit_dir: Path | None = None) -> Installation:
    kind = kind or default_kind()
    folder = unit_dir or default_unit_dir(kind)
    name = UNIT_NAME if kind == "systemd" else f"{AGENT_LABEL}.plist"
    program = this_program()
    return Installation(
        kind=kind, unit_path=folder.expanduser().absolute() / name, program=program,
        config_path=config_path.expanduser().absolute() if config_path else None,
        data_dir=config.data_path().absolute(), path_env=service_path(program),
        stop_seconds=config.gateway.stop_seconds)


def render(install: Installation) -> str:
    return _systemd_unit(install) if install.kind == "systemd" else _launchd_plist(install)


def _systemd_quote(value: str) -> str:
    if value and not any(c in value for c in ' "\\\'$%;'):
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace(
        "$", "$$")
    return f'"{escaped}"'


def _systemd_unit(install: Installation) -> str:
    config_home = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    exec_start = " ".join(_systemd_quote(a) for a in install.arguments)
    return f"""\
# Written by `hearthbot service install` for this installation;
# `hearthbot service uninstall` removes it. Secrets (TELEGRAM_BOT_TOKEN, ...) go in
# {config_home}/hearthbot/env, readable by you only.
[Unit]
Description=hearthbot local-first chat gateway
After=network-online.target
Wants=network-online.target
StartLimitIntervalSec=300
StartLimitBurst=10

[Service]
Type=simple
WorkingDirectory={_systemd_quote(str(install.data_dir))}
Environment={_systemd_quote("PATH=" + install.path_env)}
Environment=ORT_DISABLE_TELEMETRY=1
Environment=PYTHONUNBUFFERED=1
Environment={SERVICE_MARKER}=1
EnvironmentFile=-{_systemd_quote(config_home + "/hearthbot/env")}
ExecStart={exec_start}
Restart=on-failure
RestartSec=2
# Replies under way get gateway.stop_seconds to finish; managed model servers stop with it.
TimeoutStopSec={int(install.stop_seconds) + 15}
KillMode=control-group
StandardOutput=append:{install.log_file}
StandardError=append:{install.log_file}

[Install]
WantedBy=default.target
"""


def _launchd_plist(install: Installation) -> str:
    agent = {
        "Label": AGENT_LABEL,
        "ProgramArguments": install.arguments,
        "WorkingDirectory": str(install.data_dir),
        "EnvironmentVariables": {"PATH": install.path_env, "ORT_DISABLE_TELEMETRY": "1",
                                 "PYTHONUNBUFFERED": "1", SERVICE_MARKER: "1"},
        "RunAtLoad": True,
        # Restarted when it exits with an error or is killed; a clean stop stays stopped.
        "KeepAlive": {"SuccessfulExit": False},
        "ThrottleInterval": 5,
        "ExitTimeOut": int(install.stop_seconds) + 15,
        "StandardOutPath": str(install.log_file),
        "StandardErrorPath": str(install.log_file),
    }
    import plistlib  # launchd only; every command reads SERVICE_MARKER from here

    return plistlib.dumps(agent).decode()


def write(install: Installation) -> None:
    install.unit_path.parent.mkdir(parents=True, exist_ok=True)
    install.log_file.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=install.unit_path.parent, prefix=".hearthbot-")
    with os.fdopen(handle, "w", encoding="utf-8") as out:
        out.write(render(install))
    os.chmod(temporary, 0o644)
    os.replace(temporary, install.unit_path)


@dataclass(frozen=True)
class Verdict:
    ok: bool | None  # None: no verifier on this system
    text: str


def verify(install: Installation) -> Verdict:
    """Check the written file with the system's own tool where there is one."""
    if install.kind == "launchd":
        if shutil.which("plutil"):
            done = _run(["plutil", "-lint", str(install.unit_path)])
            return Verdict(done.returncode == 0, (done.stdout + done.stderr).strip())
        try:
            import plistlib

            agent = plistlib.loads(install.unit_path.read_bytes())
        except Exception as exc:
            return Verdict(False, f"not a property list: {exc}")
        missing = [a for a in agent.get("ProgramArguments", [])[:1] if not Path(a).exists()]
        if missing:
            return Verdict(False, f"{missing[0]} does not exist")
        return Verdict(None, "plutil is not available here; the property list parses and "
                             "its program exists")
    if not shutil.which("systemd-analyze"):
        return Verdict(None, "systemd-analyze is not available here; not verified")
    done = _run(["systemd-analyze", "verify", "--user", str(install.unit_path)])
    if "Failed to initialize manager" in done.stderr or "RuntimeDirectory" in done.stderr:
        # No user manager to ask (a container, a session without XDG_RUNTIME_DIR): the
        # system-wide check reads the same file and checks the same programs.
        done = _run(["systemd-analyze", "verify", str(install.unit_path)])
    output = (done.stdout + done.stderr).strip()
    return Verdict(done.returncode == 0 and not output, output or "systemd-analyze: no problems")


def load_commands(install: Installation) -> list[list[str]]:
    if install.kind == "systemd":
        return [["systemctl", "--user", "daemon-reload"],
                ["systemctl", "--user", "enable", "--now", UNIT_NAME]]
    domain = f"gui/{os.getuid()}"
    return [["launchctl", "bootstrap", domain, str(install.unit_path)],
            ["launchctl", "enable", f"{domain}/{AGENT_LABEL}"]]


def unload_commands(install: Installation) -> list[list[str]]:
    if install.kind == "systemd":
        return [["systemctl", "--user", "disable", "--now", UNIT_NAME]]
    return [["launchctl", "bootout", f"gui/{os.getuid()}/{AGENT_LABEL}"]]


def manager_state(install: Installation) -> str:
    """What the service manager says about the unit, in its own first line."""
    if install.kind == "systemd":
        command = ["systemctl", "--user", "is-active", UNIT_NAME]
    else:
        command = ["launchctl", "print", f"gui/{os.getuid()}/{AGENT_LABEL}"]
    if shutil.which(command[0]) is None:
        return f"{command[0]} is not available here"
    done = _run(command)
    lines = (done.stdout or done.stderr).strip().splitlines()
    return lines[0] if lines else f"exit status {done.returncode}"


def run_all(commands: list[list[str]]) -> tuple[bool, str]:
    """Run commands in order; stop at the first failure and say which and why."""
    for command in commands:
        if shutil.which(command[0]) is None:
            return False, f"{command[0]} is not available here; run: {shlex.join(command)}"
        done = _run(command)
        if done.returncode != 0:
            return False, (f"{shlex.join(command)} failed: "
                           f"{(done.stderr or done.stdout).strip() or done.returncode}")
    return True, ""


def _run(command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
