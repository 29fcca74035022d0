"""Both stages on a 2-worker Ray Train (CPU, gloo) group, writing the model artifact."""

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from raymae.artifact import ModelArtifact
from raymae.training.ray_driver import TrainJob, run_training
from raymae.training.resources import machine_cores
from tests.conftest import tiny_recipe
from tests.ray_faults import actors, kill_actor_process, wait_for

pytestmark = pytest.mark.slow


def test_two_workers_train_both_stages_and_write_the_artifact(ray_local, synthetic_dataset, tmp_path,
                                                              monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative paths must reach the workers too
    job = TrainJob(data=synthetic_dataset, out="model", config=tiny_recipe(3, 2), workers=2, storage="runs")
    artifact = run_training(job)
    assert artifact.info["workers"] == 2
    assert artifact.info["torch_threads"] == max(1, machine_cores() // 2)  # each its half of the machine
    saved = ModelArtifact.load(job.out)
    assert saved.model_id == artifact.model_id
    meta = json.loads((tmp_path / "model" / "config.json").read_text())
    assert meta["calibration"]["threshold"] > 0 and meta["config"]["stage1"]["epochs"] == 3
    # every epoch left a checkpoint report; the run folder is where RunConfig put it
    assert [p.name for p in (tmp_path / "runs").iterdir()] == [artifact.info["run_name"]]

    # resubmitting the same job resumes the finished run instead of training again
    again = run_training(job)
    assert again.model_id == artifact.model_id


def test_one_worker_trains_on_every_core_not_the_one_cpu_ray_reserved_and_takes_loader_processes(
        ray_local, synthetic_dataset, tmp_path):
    job = TrainJob(data=synthetic_dataset, out=str(tmp_path / "model"), config=tiny_recipe(2, 2), workers=1,
                   storage=str(tmp_path / "runs"), loader_workers=1)
    artifact = run_training(job)
    assert artifact.info["torch_threads"] == machine_cores()  # Ray alone would have set OMP_NUM_THREADS=1
    assert artifact.info["loader_workers"] == 1
    assert [h["stage"] for h in artifact.info["history"]] == [1, 1, 2, 2]


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


# ------------------------------------------------------------------ faults
def registered(run_dir: Path) -> dict | None:
    """(stage, epoch) of the newest checkpoint Ray Train's controller has registered for the run.

    The controller writes its snapshot when it registers a reported checkpoint (it
    collects reports every ~2 s); only a registered checkpoint is sure to be resumed
    from, so faults are injected after one, never in the window before.
    """
    try:
        snapshot = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
    except (OSError, ValueError):  # not written yet, or being written
        return None
    latest = snapshot.get("latest_checkpoint_result") or {}
    metrics = latest.get("metrics") or {}
    return {"stage": metrics["stage"], "epoch": metrics["epoch"]} if "stage" in metrics else None


def kill_workers_mid_stages(run_dir: Path, windows: dict[int, range], killed: list[dict]) -> threading.Thread:
    """A thread that SIGKILLs one Ray Train worker once per stage in `windows`, as soon as a
    checkpoint of that stage with an epoch in its window is registered."""
    def run() -> None:
        for stage, epochs in windows.items():
            hit = wait_for(lambda: (r := registered(run_dir)) and r["stage"] == stage and r["epoch"] in epochs
                           and actors("RayTrainWorker") and r, timeout=600, interval=0.02)
            if not hit:
                return
            kill_actor_process(actors("RayTrainWorker")[-1])
            killed.append(hit)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_a_worker_killed_in_each_stage_resumes_from_the_last_checkpoint(ray_local, synthetic_dataset, tmp_path,
                                                                        reliability):
    epochs = (10, 8)
    job = TrainJob(data=synthetic_dataset, out=str(tmp_path / "model"), config=tiny_recipe(*epochs),
                   workers=2, storage=str(tmp_path / "runs"), max_failures=2)
    killed: list[dict] = []
    killer = kill_workers_mid_stages(tmp_path / "runs" / job.resolved_run_name(),
                                     {1: range(1, epochs[0]), 2: range(1, epochs[1])}, killed)
    artifact = run_training(job)
    killer.join(timeout=30)
    reliability.training_run("a Ray Train worker SIGKILLed in stage 1 and again in stage 2", len(killed),
                             artifact, epochs)

    assert [k["stage"] for k in killed] == [1, 2], killed
    resumes = artifact.info["resumes"]
    assert [r["stage"] for r in resumes] == [1, 2]
    for resume, kill in zip(resumes, killed):  # from the registered checkpoint or a later one, never epoch 0
        assert resume["epoch"] >= kill["epoch"] >= 1, (resumes, killed)
    # every epoch of both stages appears exactly once in the carried history
    history = [(h["stage"], h["epoch"]) for h in artifact.info["history"]]
    assert history == [(1, e) for e in range(1, epochs[0] + 1)] + [(2, e) for e in range(1, epochs[1] + 1)]
    assert ModelArtifact.load(job.out).model_id == artifact.model_id


def test_a_killed_driver_resubmitted_with_the_same_run_name_resumes(ray_local, synthetic_dataset, tmp_path,
                                                                    reliability):
    import ray

    epochs = (6, 1)
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps(tiny_recipe(*epochs).to_dict()))
    run_dir = tmp_path / "runs" / "nightly-model"
    driver = subprocess.Popen(
        [sys.executable, "-m", "raymae.cli", "train", "--data", synthetic_dataset, "--out", str(tmp_path / "model"),
         "--config", str(recipe), "--workers", "2", "--storage", str(tmp_path / "runs"),
         "--run-name", "nightly-model", "--max-failures", "0"],
        env={**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        at = wait_for(lambda: (r := registered(run_dir)) and r["stage"] == 1 and r["epoch"] >= 2 and r,
                      timeout=600, interval=0.02)
    finally:
        driver.kill()  # SIGKILL: the driver gets no chance to clean up
        _, err = driver.communicate(timeout=60)
    assert at, f"no stage-1 checkpoint was registered: {err[-2000:]}"
    assert not (tmp_path / "model").exists()
    # Ray ends a dead driver's actors; resubmitting while they still run would race them
    mine = ray.get_runtime_context().get_job_id()  # this process's own finished runs may keep a controller
    assert wait_for(lambda: not [a for a in actors("Train") if a["JobID"] != mine], timeout=120)

    job = TrainJob(data=synthetic_dataset, out=str(tmp_path / "model"), config=tiny_recipe(*epochs), workers=2,
                   storage=str(tmp_path / "runs"), run_name="nightly-model")
    artifact = run_training(job)
    reliability.training_run("the training driver SIGKILLed in stage 1, then resubmitted with its run name", 1,
                             artifact, epochs)

    resume, = artifact.info["resumes"]
    assert resume["stage"] == 1 and resume["epoch"] >= at["epoch"] >= 2
    history = [(h["stage"], h["epoch"]) for h in artifact.info["history"]]
    assert history == [(1, e) for e in range(1, epochs[0] + 1)] + [(2, e) for e in range(1, epochs[1] + 1)]
    assert ModelArtifact.load(job.out).model_id == artifact.model_id
