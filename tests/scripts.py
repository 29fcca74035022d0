"""Loading the project's scripts (jobs/, benchmarks/) as modules, without running their __main__,
and checking that a command line they (or the docs) show is accepted by the real CLI parser."""

from __future__ import annotations

import importlib.util
import shlex
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


def cli_argv(name: str, args: list[str]) -> list[str]:
    """The argv jobs/<name>.py hands to `raymae.cli.main`: the subcommand `name`
    and the job's flags, after the script's own defaults (jobs/score.py adds
    `--date <today, UTC>` when there is none)."""
    module = load_script(f"jobs/{name}.py")
    return [name, *getattr(module, "with_default_date", list)(args)]


def assert_cli_accepts(where: str, name: str, args: list[str], through_job: bool = True) -> None:
    """`raymae <name> <args>` parses with `raymae.cli.build_parser`; with ``through_job``, as
    jobs/<name>.py passes them on (its defaults added)."""
    import pytest

    from raymae.cli import build_parser

    argv = cli_argv(name, args) if through_job else [name, *args]
    try:
        build_parser().parse_args(argv)
    except SystemExit:
        shown = f"jobs/{name}.py (`raymae {name}`)" if through_job else f"`raymae {name}`"
        pytest.fail(f"{where}: {shown} rejects {shlex.join(args)}")
