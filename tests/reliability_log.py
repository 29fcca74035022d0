"""What the fault-injection tests saw, collected into benchmarks/results/reliability.json.

Tests record their figures *before* they assert, from the output they actually
read back, so a failing run writes its real losses too. ``pytest
--reliability-json PATH`` (what ``benchmarks/reliability.py`` runs) writes the file
at the end of the session; a plain ``pytest`` run records and writes nothing.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field


@dataclass
class FaultRun:
    test: str
    fault: str              # what was injected
    injected: int           # how many times
    completed: bool         # the run finished and published its rows
    stopped_cleanly: bool   # or it had to stop: with a clear error, publishing nothing
    inputs: int             # images in
    rows_out: int           # rows in the output
    lost: int               # inputs with no row
    duplicates: int         # rows beyond one per input


@dataclass
class TrainingRun:
    test: str
    fault: str
    injected: int
    completed: bool           # the artifact was written
    resumed_at: list[dict]    # {"stage", "epoch"} of each restart: epochs already done, never all zero
    epochs: int               # epochs the recipe asks for
    epochs_missing: int       # epochs absent from the carried loss history
    epochs_repeated: int      # epochs in it more than once


@dataclass
class BadInput:
    kinds_tried: list[str]
    kinds_handled: list[str]
    inputs: int
    rows_out: int


@dataclass
class ReliabilityLog:
    runs: list[FaultRun] = field(default_factory=list)
    training: list[TrainingRun] = field(default_factory=list)
    bad_inputs: list[BadInput] = field(default_factory=list)
    current_test: str = ""

    def run(self, fault: str, injected: int, completed: bool, expected: list[str] | set[str],
            output: list[str], stopped_cleanly: bool = False) -> FaultRun:
        """Record one run: `expected` image URIs in, `output` image URIs out (with repeats)."""
        counts = Counter(output)
        entry = FaultRun(self.current_test, fault, injected, completed, stopped_cleanly,
                         len(set(expected)), len(output),
                         lost=len(set(expected) - set(counts)),
                         duplicates=sum(n - 1 for n in counts.values()))
        self.runs.append(entry)
        return entry

    def training_run(self, fault: str, injected: int, artifact, stage_epochs: tuple[int, int]) -> TrainingRun:
        """Record a training run from its artifact's carried history and resume events."""
        expected = [(1, e) for e in range(1, stage_epochs[0] + 1)] + [(2, e) for e in range(1, stage_epochs[1] + 1)]
        done = Counter((h["stage"], h["epoch"]) for h in artifact.info["history"]) if artifact else Counter()
        entry = TrainingRun(self.current_test, fault, injected, artifact is not None,
                            list(artifact.info.get("resumes", [])) if artifact else [], len(expected),
                            epochs_missing=sum(e not in done for e in expected),
                            epochs_repeated=sum(n - 1 for n in done.values()))
        self.training.append(entry)
        return entry

    def bad_input(self, tried: list[str], handled: list[str], inputs: int, rows_out: int) -> None:
        self.bad_inputs.append(BadInput(tried, handled, inputs, rows_out))

    def summary(self) -> dict:
        runs = [asdict(r) for r in self.runs]
        kinds = sorted({k for b in self.bad_inputs for k in b.kinds_tried})
        handled = sorted(set.intersection(*(set(b.kinds_handled) for b in self.bad_inputs))) if self.bad_inputs else []
        return {
            "faults_injected": sum(r["injected"] for r in runs),
            "runs": len(runs),
            "runs_completed": sum(r["completed"] for r in runs),
            "runs_stopped_cleanly": sum(r["stopped_cleanly"] for r in runs),
            "inputs_in": sum(r["inputs"] for r in runs),
            "rows_out": sum(r["rows_out"] for r in runs),
            "rows_lost": sum(r["lost"] for r in runs),
            "duplicates": sum(r["duplicates"] for r in runs),
            "training_runs": len(self.training),
            "training_runs_completed": sum(t.completed for t in self.training),
            "training_restarts_from_epoch_zero": sum(
                not (r["stage"] > 1 or r["epoch"] > 0) for t in self.training for r in t.resumed_at),
            "training_epochs_missing": sum(t.epochs_missing for t in self.training),
            "training_epochs_repeated": sum(t.epochs_repeated for t in self.training),
            "bad_input_kinds_tried": len(kinds),
            "bad_input_kinds_handled": len(handled),
            "bad_input_kinds": kinds,
            "fault_runs": runs,
            "training_fault_runs": [asdict(t) for t in self.training],
        }

    def write(self, path: str, extra: dict) -> None:
        with open(path, "w") as f:
            json.dump({**extra, **self.summary()}, f, indent=2)
            f.write("\n")
