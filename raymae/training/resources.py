"""The CPU a training process uses: its torch threads and its DataLoader processes.

Ray gives every Train worker ``OMP_NUM_THREADS`` = the CPUs it reserved, one by default,
so without a plan a worker alone on a 2-core machine trains on one core. And stage 2's
corruption is CPU work: in the training process a GPU waits for it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

# DataLoader processes a GPU worker gets at most: on an H200 machine (16 cores) 12 processes
# corrupted about 560 images/s at 224 px, still fewer than stage 2 trains (docs/experiments.md).
MAX_GPU_LOADERS = 12
# On CPUs the training process's own threads use the cores; a stage-2 batch's corruption is a
# small share of its step, so it stays in the training process (benchmarks/training_speed.py).
CPU_LOADERS = 0


@dataclass(frozen=True)
class WorkerResources:
    """What one training process runs with."""

    threads: int          # torch intra-op threads
    loader_workers: int   # DataLoader processes preparing (corrupting) its batches

    def apply(self) -> None:
        torch.set_num_threads(self.threads)


def resources_used(loader_workers: int) -> dict:
    """What a training run records of the CPU it used (the artifact's ``info``, results files)."""
    return {"torch_threads": torch.get_num_threads(), "loader_workers": loader_workers}


def machine_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS tells it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def plan_resources(gpu: bool, processes_here: int = 1, loader_workers: int | None = None,
                   cores: int | None = None) -> WorkerResources:
    """Threads and loader processes for one of ``processes_here`` training processes on a machine.

    Each gets an equal share of the ``cores`` (default: :func:`machine_cores`). ``loader_workers``
    None means automatic: on a GPU every core of the share but one (at most
    :data:`MAX_GPU_LOADERS`), on CPUs :data:`CPU_LOADERS`. On CPUs the threads are the whole share.
    """
    if loader_workers is not None and loader_workers < 0:
        raise ValueError(f"loader workers must be 0 or more, not {loader_workers}")
    share = max(1, (cores or machine_cores()) // max(1, processes_here))
    if loader_workers is None:
        loader_workers = min(MAX_GPU_LOADERS, share - 1) if gpu else min(CPU_LOADERS, share - 1)
    threads = max(1, share - loader_workers) if gpu else share
    return WorkerResources(threads=threads, loader_workers=loader_workers)
