"""Shared fixtures: small synthetic MVTec-style data and a tiny, fast recipe."""

from __future__ import annotations

import pytest
import torch

from raymae.config import (AnomalyMapConfig, ModelConfig, RaymaeConfig, Stage1Config,
                           Stage2Config)
from raymae.synthetic import write_mvtec_dataset

torch.set_num_threads(2)


def tiny_recipe(stage1_epochs: int = 12, stage2_epochs: int = 10) -> RaymaeConfig:
    """A 64 px, patch-8, 4-block MAE that learns the synthetic texture in seconds."""
    return RaymaeConfig(
        model=ModelConfig(size="tiny", image_size=64, patch_size=8, depth=4, decoder_depth=2,
                          stage2_extra_blocks=1),
        stage1=Stage1Config(epochs=stage1_epochs, batch_size=16, lr=1e-3, warmup_epochs=1),
        stage2=Stage2Config(epochs=stage2_epochs, batch_size=16, lr=1e-3, warmup_epochs=1),
        anomaly_map=AnomalyMapConfig(sigma=1.0),
    )


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("synthetic")
    return str(write_mvtec_dataset(root, n_train=60, n_test_good=10, n_test_defect_per_type=6,
                                   size=64, seed=0))


@pytest.fixture(scope="session")
def trained_artifact(synthetic_dataset):
    """One model trained in-process on the synthetic data, shared by several tests."""
    from raymae.training.local import train_local

    return train_local(synthetic_dataset, tiny_recipe())


# Recognisable fake credentials: tests look for them in logs, errors and outputs.
FAKE_ACCESS_KEY_ID = "RAYMAEFAKEKEYID00001"
FAKE_SECRET_ACCESS_KEY = "raymae/FAKE+secret/never-to-be-logged/0042"


@pytest.fixture(scope="session")
def s3_proxy():
    """A real S3 HTTP endpoint (moto) on loopback behind a proxy that injects faults when told
    (tests/faulty_s3.py; it passes everything through otherwise). AWS_* variables point every
    client at the proxy, with recognisable fake credentials."""
    import os

    from moto.server import ThreadedMotoServer

    from tests.faulty_s3 import FaultyS3Proxy

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    proxy = FaultyS3Proxy(f"http://{host}:{port}").start()
    env = {"AWS_ENDPOINT_URL": proxy.endpoint, "AWS_ACCESS_KEY_ID": FAKE_ACCESS_KEY_ID,
           "AWS_SECRET_ACCESS_KEY": FAKE_SECRET_ACCESS_KEY, "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield proxy
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    proxy.stop()
    server.stop()


@pytest.fixture(scope="session")
def s3_server(s3_proxy) -> str:
    """The S3 endpoint every client uses."""
    return s3_proxy.endpoint


@pytest.fixture
def s3_faults(s3_proxy):
    """The fault-injecting proxy, with no faults again after the test."""
    s3_proxy.clear()
    yield s3_proxy
    s3_proxy.clear()


@pytest.fixture
def s3_bucket(s3_server):
    """A fresh, empty bucket: returns its s3:// URI."""
    import uuid

    import s3fs

    name = f"raymae-{uuid.uuid4().hex[:10]}"
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server})
    fs.mkdir(name)
    fs.invalidate_cache()
    return f"s3://{name}"


@pytest.fixture(scope="session")
def ray_local(s3_server):
    """Local Ray started after the S3 variables are set, so its workers inherit them."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def model_dir(trained_artifact, tmp_path_factory) -> str:
    """The shared trained model, saved as a model folder."""
    path = tmp_path_factory.mktemp("model") / "tiny"
    trained_artifact.save(str(path))
    return str(path)


@pytest.fixture(scope="session")
def s3_night_240(s3_server, synthetic_dataset, tmp_path_factory) -> dict:
    """240 images in S3 under four camera folders: a night long enough to be interrupted."""
    import shutil
    import uuid
    from pathlib import Path

    from raymae import storage

    fs, _ = storage.resolve("s3://any-bucket")
    bucket = f"raymae-{uuid.uuid4().hex[:10]}"
    fs.mkdir(bucket)
    test = sorted(Path(synthetic_dataset, "test").glob("*/*.png"))
    local = tmp_path_factory.mktemp("night-240")
    for i in range(240):
        dest = local / f"cam{i % 4}" / f"{i:04d}.png"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(test[i % len(test)], dest)
    fs.put(str(local) + "/", f"s3://{bucket}/dump/", recursive=True)
    fs.invalidate_cache()
    images = sorted(f"s3://{f}" for f in fs.find(f"{bucket}/dump"))
    assert len(images) == 240
    return {"bucket": bucket, "input": f"s3://{bucket}/dump/", "images": images}


# ------------------------------------------------------------------ reliability figures
def pytest_addoption(parser):
    parser.addoption("--reliability-json", default=None,
                     help="write what the fault-injection tests saw to this JSON file")


@pytest.fixture(scope="session")
def reliability_log(request):
    from tests.reliability_log import ReliabilityLog

    log = ReliabilityLog()
    yield log
    path = request.config.getoption("--reliability-json")
    if path:
        log.write(path, {"pytest_args": request.config.invocation_params.args})


@pytest.fixture
def reliability(reliability_log, request):
    """The session's ReliabilityLog, told which test is recording."""
    reliability_log.current_test = request.node.name
    return reliability_log
