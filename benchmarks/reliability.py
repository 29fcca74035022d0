"""What raymae keeps when things break: run the fault-injection and bad-input tests, write their figures.

    python benchmarks/reliability.py                 # -> benchmarks/results/reliability.json

Runs the tests below (the same ones CI runs) with ``--reliability-json``: each fault
test records what it injected and what it read back *before* it asserts, so the file
holds the real figures even when a test fails. The file also says how many tests
passed; the command exits non-zero if any failed or any row was lost or repeated.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = [
    "tests/test_bad_input.py",
    "tests/test_storage_faults.py",
    "tests/test_scoring_faults.py",
    "tests/test_multinode.py",
    "tests/test_ray_train.py::test_a_worker_killed_in_each_stage_resumes_from_the_last_checkpoint",
    "tests/test_ray_train.py::test_a_killed_driver_resubmitted_with_the_same_run_name_resumes",
]


def machine() -> dict:
    import torch

    info = {"platform": platform.platform(), "python": platform.python_version(), "cpu_cores": os.cpu_count()}
    info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "reliability.json"))
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        figures = Path(tmp) / "figures.json"
        junit = Path(tmp) / "junit.xml"
        start = time.time()
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS,
                               "--reliability-json", str(figures), "--junitxml", str(junit)], cwd=ROOT)
        wall = time.time() - start
        if not figures.exists():
            print("the tests wrote no figures", file=sys.stderr)
            return proc.returncode or 1
        record = json.loads(figures.read_text())
        tests = _junit_counts(junit)

    ok = proc.returncode == 0 and record["rows_lost"] == 0 and record["duplicates"] == 0
    out = {"command": "python benchmarks/reliability.py", "tests": TESTS, **tests,
           "all_tests_passed": proc.returncode == 0, "wall_seconds": round(wall, 1), "machine": machine(),
           **{k: v for k, v in record.items() if k != "pytest_args"}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"{out['faults_injected']} faults in {out['runs']} scoring runs and {out['training_runs']} training "
          f"runs: {out['rows_lost']} rows lost, {out['duplicates']} duplicates; "
          f"{out['bad_input_kinds_handled']}/{out['bad_input_kinds_tried']} bad-input kinds handled; "
          f"{tests['tests_passed']}/{tests['tests_run']} tests passed -> {args.out}")
    return 0 if ok else 1


def _junit_counts(path: Path) -> dict:
    import xml.etree.ElementTree as ET

    suite = ET.parse(path).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    run = int(suite.get("tests", 0))
    bad = sum(int(suite.get(k, 0)) for k in ("failures", "errors", "skipped"))
    return {"tests_run": run, "tests_passed": run - bad}


if __name__ == "__main__":
    sys.exit(main())
