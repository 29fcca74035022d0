"""`raymae score` that kills its own process (SIGKILL: no clean-up runs) at a chosen point.

    python tests/crashing_score.py writing|publishing <raymae score arguments>

* ``writing``: as soon as the first Parquet file appears in the output's staging
  folder, and at the latest when the write returns (before anything is published);
* ``publishing``: when the first staged file is about to be moved into the date's
  partition (the old partition is already removed by then).

Only for local outputs. The tests run it against their Ray cluster (RAY_ADDRESS).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path


def die(*_args, **_kwargs) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def crash_while_writing(output: str) -> None:
    import raymae.scoring as scoring

    staging = Path(output) / scoring.STAGING

    def watch() -> None:
        while not any(staging.glob("*/*.parquet")):
            time.sleep(0.002)
        die()

    threading.Thread(target=watch, daemon=True).start()
    scoring.count_rows = die  # the first thing run() does after the write returns


def crash_while_publishing() -> None:
    from fsspec.implementations.local import LocalFileSystem

    real_mv = LocalFileSystem.mv

    def mv(self, path1, path2, *args, **kwargs):
        if "/_staging/" in str(path1) and "/_staging/" not in str(path2):
            die()
        return real_mv(self, path1, path2, *args, **kwargs)

    LocalFileSystem.mv = mv


if __name__ == "__main__":
    point, argv = sys.argv[1], sys.argv[2:]
    if point == "writing":
        crash_while_writing(argv[argv.index("--output") + 1])
    elif point == "publishing":
        crash_while_publishing()
    else:
        raise SystemExit(f"unknown crash point {point!r}")
    from raymae.cli import main

    main(["score", *argv])
    raise SystemExit("the crash point was never reached")
