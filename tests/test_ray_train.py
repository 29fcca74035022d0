"""Both stages on a 2-worker Ray Train (CPU, gloo) group, writing the model artifact."""

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from raymae.artifact import ModelArtifact
from raymae.ray_train import TrainJob, run_training
from tests.conftest import tiny_recipe

pytestmark = pytest.mark.slow


def test_two_workers_train_both_stages_and_write_the_artifact(ray_local, synthetic_dataset, tmp_path,
                                                              monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative paths must reach the workers too
    job = TrainJob(data=synthetic_dataset, out="model", config=tiny_recipe(3, 2), workers=2, storage="runs")
    artifact = run_training(job)
    assert artifact.info["workers"] == 2
    saved = ModelArtifact.load(job.out)
    assert saved.model_id == artifact.model_id
    meta = json.loads((tmp_path / "model" / "config.json").read_text())
    assert meta["calibration"]["threshold"] > 0 and meta["config"]["stage1"]["epochs"] == 3
    # every epoch left a checkpoint report; the run folder is where RunConfig put it
    assert [p.name for p in (tmp_path / "runs").iterdir()] == [artifact.info["run_name"]]

    # resubmitting the same job resumes the finished run instead of training again
    again = run_training(job)
    assert again.model_id == artifact.model_id


def test_data_checkpoints_and_artifact_can_all_live_in_s3(ray_local, synthetic_dataset, s3_bucket):
    from raymae import storage

    fs, _ = storage.resolve(s3_bucket)
    fs.put(synthetic_dataset + "/", s3_bucket + "/data/", recursive=True)
    job = TrainJob(data=s3_bucket + "/data", out=s3_bucket + "/models/m1", config=tiny_recipe(2, 1),
                   workers=2, storage=s3_bucket + "/runs")
    artifact = run_training(job)
    fs.invalidate_cache()
    assert fs.exists(f"{s3_bucket}/models/m1/model.safetensors")
    assert fs.exists(f"{s3_bucket}/runs/{job.resolved_run_name()}")
    assert ModelArtifact.load(job.out).model_id == artifact.model_id


def _train_worker_pids() -> list[int]:
    """PIDs of live Ray Train worker processes (Ray titles them ray::RayTrainWorker...)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and b"ray::RayTrainWorker" in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            continue
    return sorted(pids)


def test_a_killed_worker_resumes_from_the_last_checkpoint(ray_local, synthetic_dataset, tmp_path):
    job = TrainJob(data=synthetic_dataset, out=str(tmp_path / "model"), config=tiny_recipe(20, 2),
                   workers=2, storage=str(tmp_path / "runs"), max_failures=2)
    run_dir = tmp_path / "runs" / job.resolved_run_name()
    killed: list[int] = []
    earlier_runs = set(_train_worker_pids())  # workers of earlier tests may still be exiting

    def kill_a_worker_after_two_epochs() -> None:
        # Ray Train's controller collects reported checkpoints every 2 s: wait 3 s after the
        # first one so that at least one has been registered, then kill while still in stage 1.
        deadline, first_seen = time.time() + 300, None
        while time.time() < deadline and not killed:
            latest = sorted(run_dir.glob("checkpoint_*/state.json"))[-1:]  # names sort by time
            try:
                state = json.loads(latest[0].read_text()) if latest else {}
            except (OSError, ValueError):  # a checkpoint being written right now
                state = {}
            pids = [p for p in _train_worker_pids() if p not in earlier_runs]
            if state and first_seen is None:
                first_seen = time.time()
            settled = first_seen is not None and time.time() - first_seen > 3
            if pids and settled and state.get("stage") == 1 and state["epoch"] < 17:  # mid stage 1
                os.kill(pids[-1], signal.SIGKILL)
                killed.append(pids[-1])
            time.sleep(0.1)

    killer = threading.Thread(target=kill_a_worker_after_two_epochs, daemon=True)
    killer.start()
    artifact = run_training(job)
    killer.join()

    assert killed, "no worker was killed"
    resumes = artifact.info["resumes"]
    assert resumes and resumes[0]["stage"] == 1 and resumes[0]["epoch"] >= 1  # not restarted from zero
    # every epoch of both stages appears exactly once in the carried history
    epochs = [(h["stage"], h["epoch"]) for h in artifact.info["history"]]
    assert epochs == [(1, e) for e in range(1, 21)] + [(2, e) for e in range(1, 3)]
    assert ModelArtifact.load(job.out).model_id == artifact.model_id
