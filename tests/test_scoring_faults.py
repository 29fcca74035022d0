"""Scoring keeps every image when its processes die: a killed model actor, a driver killed
while it writes or publishes the Parquet output (then the date is rerun)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from datetime import datetime, timezone
from pathlib import Path

import pyarrow.dataset as pds
import pytest

from raymae import storage
from raymae.scoring import MARKER, STAGING, ScoreOptions, is_complete, partition_uri, score
from tests.badfiles import write_tar
from tests.ray_faults import actors, finished_tasks, kill_actor_process, wait_for

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
DAY = "2026-11-30"
SCORER = "ScoreImages"  # the model actors' class name contains it
SCORING_TASK = "ScoreImages)).submit"  # Ray Data's name for a block's task on a model actor


def rows_of(partition: str) -> list[dict]:
    fs, path = storage.resolve(partition)
    fs.invalidate_cache()
    files = [f for f in fs.find(path) if f.endswith(".parquet")]
    return pds.dataset(files, filesystem=fs, format="parquet").to_table().to_pylist() if files else []


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------ a killed model actor
def test_a_killed_model_actor_is_restarted_and_every_image_is_scored_once(ray_local, s3_night_240, model_dir,
                                                                         tmp_path, reliability):
    """The actor is killed once it has finished two of its ~30 tasks (a batch of 8 images each),
    as the cluster's task events tell, so the moment does not depend on the machine's speed."""
    done_before = finished_tasks(SCORING_TASK)
    killed: list[dict] = []

    def kill_the_model_actor_after_two_tasks() -> None:
        if not wait_for(lambda: finished_tasks(SCORING_TASK) >= done_before + 2 and actors(SCORER), timeout=300):
            return
        actor = actors(SCORER)[0]
        kill_actor_process(actor)
        killed.append({**actor, "at": datetime.now(timezone.utc).replace(tzinfo=None),
                       "tasks_done": finished_tasks(SCORING_TASK) - done_before})

    killer = threading.Thread(target=kill_the_model_actor_after_two_tasks, daemon=True)
    killer.start()
    out = str(tmp_path / "scores")
    summary = score([s3_night_240["input"]], model_dir, out, ScoreOptions(date=DAY, batch_size=8, heatmap_size=8))
    killer.join(timeout=10)
    rows = rows_of(partition_uri(out, DAY))
    # the cluster hears of finished tasks within about a second
    tasks = wait_for(lambda: killed and (n := finished_tasks(SCORING_TASK) - done_before) > killed[0]["tasks_done"]
                     and n, timeout=15) or finished_tasks(SCORING_TASK) - done_before
    when = f" after {killed[0]['tasks_done']} of its {tasks} tasks" if killed else ""
    reliability.run(f"model actor SIGKILLed{when}", len(killed), True, s3_night_240["images"],
                    [r["image_uri"] for r in rows])

    assert killed, "the actor was never killed"
    assert killed[0]["tasks_done"] < tasks  # there was work left when it died ...
    restarted = [a for a in actors(SCORER, state=None) if a["ActorID"] == killed[0]["ActorID"]]
    assert restarted[0]["NumRestarts"] >= 1  # ... Ray restarted it ...
    assert any(r["scored_at"].replace(tzinfo=None) > killed[0]["at"] for r in rows)  # ... and it went on
    assert sorted(r["image_uri"] for r in rows) == s3_night_240["images"]  # every image exactly once
    assert summary.images == 240 and summary.errors == 0


# ------------------------------------------------------------------ a driver killed mid-write
@pytest.fixture(scope="module")
def small_night(synthetic_dataset, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("small-night")
    test = sorted(Path(synthetic_dataset, "test").glob("*/*.png"))
    for i, f in enumerate(test):
        dest = root / f"line{i % 2 + 1}" / f"{f.parent.name}-{f.name}"
        dest.parent.mkdir(exist_ok=True)
        shutil.copy(f, dest)
    shard = write_tar(root / "shards" / "shard-000.tar", {f"good/{f.name}": f.read_bytes() for f in test[:4]})
    images = sorted([str(p) for p in root.glob("line*/*.png")] + [f"{shard}#good/{f.name}" for f in test[:4]])
    return {"root": str(root), "images": images}


def crashing_run(point: str, night: dict, model_dir: str, out: Path) -> subprocess.CompletedProcess:
    import ray

    return subprocess.run(
        [sys.executable, str(ROOT / "tests" / "crashing_score.py"), point, "--input", night["root"],
         "--model", model_dir, "--output", str(out), "--date", DAY, "--batch-size", "8", "--heatmap-size", "8"],
        env={**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address,
             "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])},
        capture_output=True, text=True, timeout=600)


def test_a_crash_while_writing_or_publishing_then_a_rerun_leaves_one_complete_copy(
        ray_local, small_night, model_dir, tmp_path, reliability):
    out = tmp_path / "scores"
    partition = out / f"date={DAY}"
    opts = ScoreOptions(date=DAY, batch_size=8, heatmap_size=8)
    score([small_night["root"]], model_dir, str(out), opts)  # an earlier complete run of the night
    published = snapshot(partition)

    # 1. killed while the rows are written: the published copy is untouched
    crash = crashing_run("writing", small_night, model_dir, out)
    assert crash.returncode == -signal.SIGKILL, crash.stderr[-2000:]
    assert list((out / STAGING).glob("*/*.parquet")), "it died before any Parquet was written"
    assert snapshot(partition) == published and is_complete(str(partition))

    rerun = score([small_night["root"]], model_dir, str(out), opts)
    rows = rows_of(str(partition))
    reliability.run("driver SIGKILLed while writing Parquet, then the date rerun", 1, True,
                    small_night["images"], [r["image_uri"] for r in rows])
    assert sorted(r["image_uri"] for r in rows) == small_night["images"] and rerun.images == len(rows)
    assert is_complete(str(partition)) and not (out / STAGING).exists()  # the crashed run's staging is gone

    # 2. killed in the middle of the swap: the partition says it is incomplete
    crash = crashing_run("publishing", small_night, model_dir, out)
    assert crash.returncode == -signal.SIGKILL, crash.stderr[-2000:]
    assert not is_complete(str(partition)) and not (partition / MARKER).exists()

    rerun = score([small_night["root"]], model_dir, str(out), opts)
    rows = rows_of(str(partition))
    reliability.run("driver SIGKILLed while publishing the partition, then the date rerun", 1, True,
                    small_night["images"], [r["image_uri"] for r in rows])
    assert sorted(r["image_uri"] for r in rows) == small_night["images"] and rerun.images == len(rows)
    assert is_complete(str(partition)) and not (out / STAGING).exists()
    assert sorted(p.name for p in out.iterdir()) == [f"date={DAY}"]
