"""Both training stages on a Ray Train worker group (Train V2 ``TorchTrainer``).

Each worker loads the normal images itself (local folder or ``s3://``), the
model is wrapped in DDP by ``prepare_model`` (gloo on CPU, nccl on GPU), and
rank 0 writes a checkpoint after every epoch. When a worker dies, Ray restarts
the group (``FailureConfig``) and the loop resumes from the last checkpoint at
its stage and epoch; resubmitting with the same run name and storage resumes too.
The last checkpoint carries the finished, calibrated model artifact.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from raymae import storage
from raymae.artifact import ModelArtifact
from raymae.config import RaymaeConfig
from raymae.pretrained import load_init_weights
from raymae.training.local import finish_artifact, load_training_data, log_epoch
from raymae.training.loop import EpochResult, TrainState, train_two_stages
from raymae.training.resources import plan_resources, resources_used

log = logging.getLogger("raymae")

STATE_FILE = "state.json"
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
ARTIFACT_DIR = "artifact"
DONE = 3  # TrainState.stage of a run whose artifact is written


# ------------------------------------------------------------------ checkpoints
@dataclass
class RunLog:
    """What a run has done so far, carried from checkpoint to checkpoint.

    history: one {"stage", "epoch", "loss", "seconds", ...} per finished epoch;
    resumes: one {"stage", "epoch"} per restart from a checkpoint (after a worker
    failure or a resubmission), naming the epochs that were already done.
    """

    history: list = field(default_factory=list)
    resumes: list = field(default_factory=list)


def save_state(folder: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               stage: int, epochs_done: int, run_log: RunLog) -> None:
    """A resumable checkpoint: weights (safetensors), optimiser state, (stage, epochs done), log."""
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
              os.path.join(folder, MODEL_FILE))
    torch.save(optimizer.state_dict(), os.path.join(folder, OPTIMIZER_FILE))
    _write_meta(folder, stage, epochs_done, run_log)


def _write_meta(folder: str, stage, epochs_done: int, run_log: RunLog) -> None:
    meta = {"stage": stage, "epoch": epochs_done, **dataclasses.asdict(run_log)}
    Path(folder, STATE_FILE).write_text(json.dumps(meta))


def load_state(folder: str) -> tuple[TrainState, RunLog]:
    meta = json.loads(Path(folder, STATE_FILE).read_text())
    run_log = RunLog(meta.get("history", []), meta.get("resumes", []))
    if meta["stage"] == "done":
        return TrainState(stage=DONE), run_log
    optimizer = torch.load(os.path.join(folder, OPTIMIZER_FILE), map_location="cpu", weights_only=True)
    state = TrainState(meta["stage"], meta["epoch"], load_file(os.path.join(folder, MODEL_FILE)), optimizer)
    return state, run_log


# ------------------------------------------------------------------ worker
def train_loop_per_worker(config: dict) -> None:
    """Runs on every Ray Train worker."""
    import ray.train
    import ray.train.torch

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = RaymaeConfig.from_dict(config["raymae"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    # Ray pinned this worker to OMP_NUM_THREADS = its reserved CPUs (1): use its share of the machine
    resources = plan_resources(device.type == "cuda", ctx.get_local_world_size(), config.get("loader_workers"))
    resources.apply()

    state, run_log = TrainState(), RunLog()
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state, run_log = load_state(folder)
        if state.stage == DONE:
            return  # the run had finished; its last checkpoint holds the artifact
        run_log.resumes.append({"stage": state.stage, "epoch": state.epoch})
        log.info("rank %d resumes at stage %s after %d epoch(s)", rank, state.stage, state.epoch)

    training = load_training_data(config["data"], cfg)
    fresh = checkpoint is None
    init_state = load_init_weights(config["init"], cfg.model).state_dict if config.get("init") and fresh else None

    def report(result: EpochResult, model, optimizer) -> None:
        run_log.history.append(result.record())
        if rank == 0:
            log_epoch(result)
        metrics = result.record()
        with tempfile.TemporaryDirectory() as folder:
            ckpt = None
            if rank == 0:
                save_state(folder, model, optimizer, result.stage, result.epoch + 1, run_log)
                ckpt = ray.train.Checkpoint.from_directory(folder)
            ray.train.report(metrics, checkpoint=ckpt)

    model = train_two_stages(cfg, training.train, device, state=state, init_state=init_state,
                             wrap_model=ray.train.torch.prepare_model,
                             wrap_loader=ray.train.torch.prepare_data_loader,
                             world_size=world, loader_workers=resources.loader_workers, on_epoch_end=report)
    with tempfile.TemporaryDirectory() as folder:
        ckpt = None
        if rank == 0:
            info = {"init": config.get("init"), "workers": world, "run_name": config["run_name"],
                    **resources_used(resources.loader_workers), **dataclasses.asdict(run_log)}
            artifact = finish_artifact(model, training, cfg, info, device)
            artifact.save(os.path.join(folder, ARTIFACT_DIR))
            _write_meta(folder, "done", 0, run_log)
            ckpt = ray.train.Checkpoint.from_directory(folder)
        ray.train.report({"stage": DONE, "epoch": 0, "loss": float("nan")}, checkpoint=ckpt)


# ------------------------------------------------------------------ driver
@dataclass
class TrainJob:
    """What ``raymae train`` asks Ray Train to do."""

    data: str
    out: str
    config: RaymaeConfig
    workers: int = 1
    use_gpu: bool = False
    init: str | None = None
    storage: str = "./raymae-runs"
    run_name: str | None = None
    max_failures: int = 3
    loader_workers: int | None = None  # per worker; None: raymae.training.resources decides

    def resolved_run_name(self) -> str:
        """Same data, output and recipe -> same name, so a resubmission resumes."""
        if self.run_name:
            return self.run_name
        key = json.dumps([self.data, self.out, self.init, self.config.to_dict()], sort_keys=True)
        return "raymae-" + hashlib.sha256(key.encode()).hexdigest()[:12]


def ray_storage(uri: str) -> dict:
    """RunConfig storage arguments: s3:// through raymae's filesystem layer (same endpoint/credentials)."""
    if not storage.is_remote(uri):
        return {"storage_path": storage.absolute_uri(uri)}
    filesystem, path = storage.arrow_filesystem(uri)
    return {"storage_path": path, "storage_filesystem": filesystem}


def run_training(job: TrainJob) -> ModelArtifact:
    """Fit both stages on Ray, then write the artifact to ``job.out``."""
    import ray.train
    from ray.train.torch import TorchTrainer

    start = time.time()
    # Workers do not share the driver's working directory: make local paths absolute.
    init = job.init and (storage.absolute_uri(job.init) if os.path.exists(job.init) else job.init)
    job = dataclasses.replace(job, data=storage.absolute_uri(job.data), out=storage.absolute_uri(job.out),
                              storage=storage.absolute_uri(job.storage), init=init)
    name = job.resolved_run_name()
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"raymae": job.config.to_dict(), "data": job.data, "init": job.init,
                           "run_name": name, "loader_workers": job.loader_workers},
        scaling_config=ray.train.ScalingConfig(num_workers=job.workers, use_gpu=job.use_gpu),
        run_config=ray.train.RunConfig(
            name=name,
            failure_config=ray.train.FailureConfig(max_failures=job.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            **ray_storage(job.storage)),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"training run {name} finished without a checkpoint")
    with result.checkpoint.as_directory() as folder:
        artifact = ModelArtifact.load(os.path.join(folder, ARTIFACT_DIR))
    artifact.info["train_seconds"] = round(time.time() - start, 1)
    artifact.save(job.out)
    return artifact
