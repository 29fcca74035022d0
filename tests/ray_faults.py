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


def _task_attempts(name_contains: str) -> list:
    """Task events (one per task attempt, as the GCS merges them) whose task name contains `name_contains`."""
    from ray._private import state as ray_state

    return [e for e in ray_state.state._get_all_task_events() if name_contains in e.task_info.name]


def finished_tasks(name_contains: str) -> int:
    """How many task attempts of that name have finished (the GCS hears of them within ~1 s)."""
    from ray.core.generated.common_pb2 import TaskStatus

    return len({(e.task_id, e.attempt_number) for e in _task_attempts(name_contains)
                if TaskStatus.FINISHED in e.state_updates.state_ts_ns})


def task_nodes(name_contains: str) -> set[str]:
    """The nodes (hex ids) that ran task attempts of that name."""
    return {e.state_updates.node_id.hex() for e in _task_attempts(name_contains) if e.state_updates.node_id}
