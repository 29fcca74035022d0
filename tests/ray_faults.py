"""Killing Ray processes of *this* test cluster on purpose.

Processes are found through the cluster's own actor table (GCS), never by
scanning every process on the machine for a name: other Ray clusters may run
beside the tests.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Callable


def actors(name_contains: str, state: str | None = "ALIVE") -> list[dict]:
    """Actors of the connected cluster whose class name contains `name_contains`."""
    from ray._private import state as ray_state

    found = [a for a in ray_state.actors().values() if name_contains in a["ActorClassName"]]
    return [a for a in found if state is None or a["State"] == state]


def kill_actor_process(actor: dict) -> int:
    """SIGKILL an actor's worker process (as the OOM killer or a crash would); returns its pid."""
    pid = int(actor["Pid"])
    os.kill(pid, signal.SIGKILL)
    return pid


def wait_for(condition: Callable[[], object], timeout: float, interval: float = 0.05):
    """Poll until `condition()` is truthy; returns its value, or None after `timeout` seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    return None
