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
    completed: bool         # the run finished (or failed exactly as it must)
    inputs: int             # images in
    rows_out: int           # rows in the output
    lost: int               # inputs with no row
    duplicates: int         # rows beyond one per input


@dataclass
class BadInput:
    kinds_tried: list[str]
    kinds_handled: list[str]
    inputs: int
    rows_out: int


@dataclass
class ReliabilityLog:
    runs: list[FaultRun] = field(default_factory=list)
    bad_inputs: list[BadInput] = field(default_factory=list)
    current_test: str = ""

    def run(self, fault: str, injected: int, completed: bool, expected: list[str] | set[str],
            output: list[str]) -> FaultRun:
        """Record one run: `expected` image URIs in, `output` image URIs out (with repeats)."""
        counts = Counter(output)
        entry = FaultRun(self.current_test, fault, injected, completed, len(set(expected)), len(output),
                         lost=len(set(expected) - set(counts)),
                         duplicates=sum(n - 1 for n in counts.values()))
        self.runs.append(entry)
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
            "inputs_in": sum(r["inputs"] for r in runs),
            "rows_out": sum(r["rows_out"] for r in runs),
            "rows_lost": sum(r["lost"] for r in runs),
            "duplicates": sum(r["duplicates"] for r in runs),
            "bad_input_kinds_tried": len(kinds),
            "bad_input_kinds_handled": len(handled),
            "bad_input_kinds": kinds,
            "fault_runs": runs,
        }

    def write(self, path: str, extra: dict) -> None:
        with open(path, "w") as f:
            json.dump({**extra, **self.summary()}, f, indent=2)
            f.write("\n")
