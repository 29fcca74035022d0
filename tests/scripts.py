"""Loading the project's scripts (jobs/, benchmarks/) as modules, without running their __main__."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def load_script(relative_path: str) -> ModuleType:
    """``jobs/score.py`` -> the module; the scripts only act under ``__main__``."""
    path = ROOT / relative_path
    spec = importlib.util.spec_from_file_location(path.stem + "_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
