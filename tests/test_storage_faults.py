"""Object storage that fails: transient faults are retried, permanent ones become rows,
an unwritable output stops the run with a clear error, and credentials never leak.

Every S3 request of the run (driver, Ray workers, pyarrow) goes through the
fault-injecting proxy of tests/faulty_s3.py.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pyarrow.dataset as pds
import pytest

from raymae import storage
from raymae.cli import main
from tests.badfiles import write_tar
from tests.conftest import FAKE_ACCESS_KEY_ID, FAKE_SECRET_ACCESS_KEY
from tests.faulty_s3 import Rule

pytestmark = pytest.mark.slow

DAY = "2026-11-29"
SEEN_TEXT: list[str] = []  # everything the runs printed, for the credentials check at the end


def new_bucket() -> str:
    fs, _ = storage.resolve("s3://probe-bucket-name")
    name = f"raymae-{uuid.uuid4().hex[:10]}"
    fs.mkdir(name)
    fs.invalidate_cache()
    return name


@pytest.fixture(scope="module")
def night(s3_server, synthetic_dataset, model_dir, tmp_path_factory) -> dict:
    """A night's dump in S3 (loose images in two folders and a tar shard) and the model."""
    bucket = new_bucket()
    fs, _ = storage.resolve(f"s3://{bucket}")
    test = sorted(Path(synthetic_dataset, "test").glob("*/*.png"))
    images = []
    for i, f in enumerate(test):
        uri = f"s3://{bucket}/dumps/{DAY}/line{i % 2 + 1}/{f.parent.name}-{f.name}"
        fs.put(str(f), uri)
        images.append(uri)
    shard = write_tar(tmp_path_factory.mktemp("shard") / "shard-000.tar",
                      {f"good/{f.name}": f.read_bytes() for f in test[:6]})
    tar_uri = f"s3://{bucket}/dumps/{DAY}/shard-000.tar"
    fs.put(str(shard), tar_uri)
    images += [f"{tar_uri}#good/{f.name}" for f in test[:6]]
    fs.put(model_dir + "/", f"s3://{bucket}/models/tiny/", recursive=True)
    fs.invalidate_cache()
    return {"bucket": bucket, "input": f"s3://{bucket}/dumps/{DAY}/", "model": f"s3://{bucket}/models/tiny",
            "output": f"s3://{bucket}/scores", "images": images, "tar": tar_uri}


def score_cli(capfd, *extra: str, night: dict, output: str | None = None) -> tuple[int, str]:
    code = main(["score", "--input", night["input"], "--model", night["model"],
                 "--output", output or night["output"], "--date", DAY, "--batch-size", "8", *extra])
    out = capfd.readouterr()
    SEEN_TEXT.extend([out.out, out.err])
    return code, out.err


def read_rows(output: str) -> list[dict]:
    fs, path = storage.resolve(output)
    fs.invalidate_cache()
    files = [f for f in fs.find(f"{path}/date={DAY}") if f.endswith(".parquet")]
    return pds.dataset(files, filesystem=fs, format="parquet").to_table().to_pylist()


def objects(uri: str) -> dict[str, bytes]:
    fs, path = storage.resolve(uri)
    fs.invalidate_cache()
    return {f: fs.cat_file(f) for f in fs.find(path)}


# ------------------------------------------------------------------ transient faults
@pytest.fixture(scope="module", autouse=True)
def logged():
    """Every log record of this module's runs, at the CLI's level (INFO), into SEEN_TEXT."""
    import logging

    class Keep(logging.Handler):
        def emit(self, record):
            SEEN_TEXT.append(self.format(record))

    root, handler = logging.getLogger(), Keep(logging.INFO)
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield
    root.removeHandler(handler)
    root.setLevel(level)


@pytest.fixture(scope="module")
def flaky_night(ray_local, night, s3_proxy) -> dict:
    """The night scored by `raymae score` in its own process (a driver on the test's Ray cluster,
    streaming its workers' logs) while the store answers 503 SlowDown, drops connections and cuts
    response bodies short."""
    import os
    import subprocess
    import sys

    import ray

    s3_proxy.set(Rule("slowdown", 0.04), Rule("reset", 0.08), Rule("truncate", 0.08, methods=("GET",)))
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "raymae.cli", "score", "--input", night["input"], "--model", night["model"],
             "--output", night["output"], "--date", DAY, "--batch-size", "8"],
            env={**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address},
            capture_output=True, text=True, timeout=600)
        injected, requests = dict(s3_proxy.injected), s3_proxy.requests
    finally:
        s3_proxy.clear()
    SEEN_TEXT.extend([proc.stdout, proc.stderr])
    return {"code": proc.returncode, "injected": injected, "requests": requests, "log": proc.stdout + proc.stderr,
            "rows": read_rows(night["output"])}


def test_transient_failures_are_retried_and_every_image_is_scored_once(flaky_night, night, reliability):
    rows, injected = flaky_night["rows"], flaky_night["injected"]
    reliability.run(f"S3 transient faults on {flaky_night['requests']} requests: {injected}",
                    sum(injected.values()), flaky_night["code"] == 0, night["images"],
                    [r["image_uri"] for r in rows])
    assert flaky_night["code"] == 0, flaky_night["log"][-3000:]
    assert set(injected) == {"slowdown", "reset", "truncate"}, injected  # each kind of fault happened
    assert sorted(r["image_uri"] for r in rows) == sorted(night["images"])  # each image exactly once
    assert [r for r in rows if r["status"] != "ok"] == []


def test_the_published_partition_is_marked_complete(flaky_night, night):
    fs, path = storage.resolve(night["output"])
    marker = json.loads(fs.cat_file(f"{path}/date={DAY}/_SUCCESS"))
    assert marker["images"] == len(night["images"]) and marker["errors"] == 0
    assert not fs.exists(f"{path}/_staging")


# ------------------------------------------------------------------ permanent faults
def test_objects_that_fail_for_good_are_error_rows_and_the_rest_is_scored(ray_local, night, s3_faults, capfd,
                                                                        tmp_path, reliability):
    denied, missing = night["images"][0], night["images"][1]
    output = f"s3://{night['bucket']}/scores-permanent"
    s3_faults.set(Rule("denied", methods=("GET", "HEAD"), path=_key(denied) + "$"),
                  Rule("missing", methods=("GET", "HEAD"), path=_key(missing) + "$"),
                  Rule("denied", methods=("GET", "HEAD"), path=_key(night["tar"]) + "$"))
    code, _ = score_cli(capfd, night=night, output=output)
    injected = sum(s3_faults.injected.values())
    s3_faults.clear()
    rows = {r["image_uri"]: r for r in read_rows(output)}
    loose = [u for u in night["images"] if "#" not in u]
    expected = loose + [night["tar"]]  # the unreadable tar is one row
    reliability.run("S3 permanent faults: 403 on an image and a tar, 404 on an image", injected, code == 0,
                    expected, [r for r in rows])
    assert code == 0
    assert sorted(rows) == sorted(expected)
    assert "cannot read file: PermissionError" in rows[denied]["error"]
    assert "cannot read file: FileNotFoundError" in rows[missing]["error"]
    assert "unreadable tar archive" in rows[night["tar"]]["error"] and "PermissionError" in rows[night["tar"]]["error"]
    assert all(r["status"] == "ok" for u, r in rows.items() if u not in (denied, missing, night["tar"]))


def _key(uri: str) -> str:
    """The request-path pattern of an object (path-style addressing, as with a custom endpoint)."""
    import re

    return re.escape("/" + uri.split("://", 1)[1])


# ------------------------------------------------------------------ unwritable output
def test_an_unwritable_output_bucket_is_a_clear_error_before_anything_is_scored(night, s3_faults, capfd,
                                                                                reliability):
    readonly = new_bucket()
    s3_faults.set(Rule("denied", methods=("PUT", "POST", "DELETE"), path=f"^/{readonly}/"))
    code, err = score_cli(capfd, night=night, output=f"s3://{readonly}/scores")
    s3_faults.clear()
    reliability.run("S3 output bucket read-only (403 on every write): refused before scoring", 1, False, [], [],
                    stopped_cleanly=code == 2)
    assert code == 2
    assert err.count("\n") == 1 and "cannot write to" in err and "Access Denied" in err, err
    assert objects(f"s3://{readonly}") == {}


def test_a_missing_output_bucket_is_an_error_and_is_not_created(s3_server, tmp_path):
    from raymae.storage import StorageError, check_writable

    fs, _ = storage.resolve("s3://any-bucket")
    missing = f"raymae-missing-{uuid.uuid4().hex[:8]}"
    with pytest.raises(StorageError, match="cannot write to"):
        check_writable(f"s3://{missing}/scores/_staging")
    fs.invalidate_cache()
    assert not fs.exists(missing)
    (tmp_path / "a-file").write_text("")
    with pytest.raises(StorageError, match="cannot write to"):
        check_writable(str(tmp_path / "a-file" / "scores"))
    check_writable(str(tmp_path / "new" / "scores" / "_staging"))  # a local output may be created ...
    assert not (tmp_path / "new").exists()  # ... but the probe leaves nothing behind


def test_an_output_that_fails_while_writing_publishes_nothing_and_keeps_the_last_night(
        flaky_night, night, s3_faults, capfd, reliability):
    before = objects(night["output"])
    assert any(k.endswith("/_SUCCESS") for k in before)
    s3_faults.set(Rule("denied", methods=("PUT", "POST"), path=r"/_staging/.*\.parquet"))
    code, err = score_cli(capfd, night=night)
    injected = sum(s3_faults.injected.values())
    s3_faults.clear()
    reliability.run("S3 Parquet writes refused mid-run (403): nothing published", injected, False, [], [],
                    stopped_cleanly=code == 1 and objects(night["output"]) == before)
    assert code == 1 and injected >= 1
    last = err.strip().splitlines()[-1]  # what raymae says, after Ray's own log lines
    assert last.startswith("raymae score: failed:") and "nothing was published" in last, last
    assert last.endswith("PermissionError: Access Denied"), last
    assert objects(night["output"]) == before  # the published night is untouched, no staging left


# ------------------------------------------------------------------ credentials
def test_credentials_never_appear_in_logs_errors_outputs_or_the_model(ray_local, flaky_night, night, capfd,
                                                                     tmp_path, synthetic_dataset):
    import ray

    fs, _ = storage.resolve(night["output"])
    fs.put(synthetic_dataset + "/train/", f"s3://{night['bucket']}/data/train/", recursive=True)
    code = main(["train", "--local", "--data", f"s3://{night['bucket']}/data", "--out",
                 f"s3://{night['bucket']}/models/secret-check", "--model-size", "tiny", "--image-size", "32",
                 "--patch-size", "8", "--stage1-epochs", "1", "--stage2-epochs", "1", "--batch-size", "16"])
    out = capfd.readouterr()
    assert code == 0, out.err
    config = storage.read_bytes(f"s3://{night['bucket']}/models/secret-check/config.json")
    assert json.loads(config)["info"]  # what the artifact records about its data and run

    everything = {"output of the runs": "".join(SEEN_TEXT + [out.out, out.err]),
                  "the model's config.json": config.decode()}
    everything.update({f"Parquet {k}": v.decode("latin-1") for k, v in objects(night["output"]).items()})
    everything.update({f"error row of {r['image_uri']}": r["error"] or "" for r in flaky_night["rows"]})
    logs = Path(ray._private.worker._global_node.get_logs_dir_path())
    everything.update({f"Ray log {p.name}": p.read_text(errors="replace") for p in logs.rglob("*") if p.is_file()})
    assert len(everything) > 10 and SEEN_TEXT
    for secret in (FAKE_SECRET_ACCESS_KEY, FAKE_ACCESS_KEY_ID):
        leaks = [where for where, text in everything.items() if secret in text]
        assert not leaks, f"{secret!r} appears in {leaks}"
