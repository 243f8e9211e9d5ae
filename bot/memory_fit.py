"""Whether a model fits: its estimated peak memory against what the machine has available.

The estimate is the design's rule of thumb: weights times 1.3 (runtime buffers, KV cache headroom)
plus 0.0002 GB per token of context. Sizes come from the weights on disk (GGUF file, MLX
folder) or from what Ollama reports; available memory from the operating system.
"""

from __future__ import annotations

import platform
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bot.errors import ModelDoesNotFit

PEAK_FACTOR = 1.3
GB_PER_CONTEXT_TOKEN = 0.0002
GB = 1_000_000_000
WEIGHT_SUFFIXES = (".gguf", ".safetensors", ".bin", ".npz")


def gb(value: float) -> str:
    return f"{value:.2f} GB" if value < 10 else f"{value:.1f} GB"


@dataclass(frozen=True)
class MemoryNeed:
    weights_bytes: int
    context_tokens: int
    source: str  # where the size was read: a path, or the backend's answer

    @property
    def weights_gb(self) -> float:
        return self.weights_bytes / GB

    @property
    def peak_gb(self) -> float:
        return self.weights_gb * PEAK_FACTOR + self.context_tokens * GB_PER_CONTEXT_TOKEN

    def formula(self) -> str:
        return (f"{gb(self.weights_gb)} of weights x {PEAK_FACTOR} + {self.context_tokens} "
                f"tokens of context x {GB_PER_CONTEXT_TOKEN} GB")


def weights_bytes(path: Path) -> int | None:
    """The size of a model's weights: one file, or the weight files of a folder."""
    try:
        if path.is_file():
            return path.stat().st_size
        if path.is_dir():
            sizes = [f.stat().st_size for f in path.rglob("*")
                     if f.is_file() and f.suffix in WEIGHT_SUFFIXES]
            return sum(sizes) if sizes else None
    except OSError:
        return None
    return None


def available_memory_bytes() -> int | None:
    """Memory the system can hand out without swapping; None where it cannot be read."""
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        match = re.search(r"^MemAvailable:\s+(\d+) kB", meminfo.read_text(), re.MULTILINE)
        return int(match.group(1)) * 1024 if match else None
    if platform.system() == "Darwin":
        return _darwin_available()
    return None


def _darwin_available() -> int | None:
    # Free, inactive and speculative pages are what macOS gives to a new allocation without
    # compressing or swapping.
    try:
        out = subprocess.run(["vm_stat"], capture_output=True, text=True, timeout=5,
                             check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    page = re.search(r"page size of (\d+) bytes", out)
    pages = {m.group(1): int(m.group(2))
             for m in re.finditer(r"^Pages (free|inactive|speculative):\s+(\d+)\.", out,
                                  re.MULTILINE)}
    if page is None or not pages:
        return None
    return sum(pages.values()) * int(page.group(1))


def process_rss_bytes() -> int | None:
    """This process's resident memory now (Linux), else its peak (other systems)."""
    status = Path("/proc/self/status")
    if status.exists():
        match = re.search(r"^VmRSS:\s+(\d+) kB", status.read_text(), re.MULTILINE)
        return int(match.group(1)) * 1024 if match else None
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if platform.system() == "Darwin" else peak * 1024


def check_fits(label: str, need: MemoryNeed, available_bytes: int,
               freed: MemoryNeed | None = None, freed_label: str = "") -> None:
    """Raise ModelDoesNotFit, naming both figures, when `need` exceeds what is available.

    `freed` is the model that is unloaded before this one loads: its memory counts as
    available (estimated the same way)."""
    available = available_bytes / GB
    note = ""
    if freed is not None:
        available += freed.peak_gb
        note = f", counting about {gb(freed.peak_gb)} that unloading {freed_label} frees"
    if need.peak_gb <= available:
        return
    raise ModelDoesNotFit(
        f"{label} needs about {gb(need.peak_gb)} of memory at its peak ({need.formula()}), "
        f"but only {gb(available)} is available{note}; it was not loaded",
        needed_gb=need.peak_gb, available_gb=available)
