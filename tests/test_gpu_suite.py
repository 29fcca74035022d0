"""The GPU suite works before a GPU is spent on it: every phase at toy size on the CPU."""

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from tests.scripts import load_script

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_gpu_suite_runs_every_phase_at_toy_size_on_the_cpu(tmp_path):
    out = tmp_path / "results" / "suite.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu_suite.py"), "--smoke", "--device", "cpu",
           "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    record = json.loads(out.read_text())
    assert record["status"] == "complete" and record["smoke"] and record["device"] == "cpu"

    a = record["a_model_alone"]
    for recipe in ("gpu", "cpu"):
        for precision in ("fp32", "bf16"):
            assert a[recipe][precision]["images_per_s"] > 0, (recipe, precision)
        assert a[recipe]["bf16_max_score_change_of_spread"] >= 0

    b = record["b_score_ray_data"]
    for variant in ("pillow_decode_tasks", "jpeg_on_device"):
        row = b[variant]
        assert row["images"] == row["ok"] == b["files"], variant  # every file scored, none an error
        assert row["images_per_s"] > 0 and row["ratio_to_model_alone"] > 0
        stages = " ".join(row["stages"])
        assert "ScoreImages" in stages and "Write" in stages, row["stages"]
    assert "decode_images" in " ".join(b["pillow_decode_tasks"]["stages"])  # CPU tasks decode...
    assert "decode_images" not in " ".join(b["jpeg_on_device"]["stages"])   # ...or the actor does

    c = record["c_train_ray_train"]
    assert c["status"] == "ok", c
    assert c["first_run"]["killed_at"]["stage"] == 1 and c["resumes"][0]["stage"] == 1
    assert c["epochs_complete_once_each"] and c["artifact_bytes"] > 0

    d = record["d_quality"]
    assert d["status"] == "complete" and 0 <= d["metrics"]["image_auroc"] <= 1
    assert (out.parent / "suite-quality.json").exists()
    log = out.with_suffix(".log").read_text()
    for phase in ("a_model_alone", "b_score_ray_data", "c_train_ray_train", "d_quality"):
        assert f"phase {phase} done" in log


def _archive(path: Path, files: dict[str, str]) -> None:
    with tarfile.open(path, "w:xz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_the_suite_unpacks_only_the_carried_packages_this_machine_cannot_import(tmp_path, monkeypatch):
    suite = load_script("benchmarks/gpu_suite.py")
    wheels = tmp_path / "carry" / "wheels"
    wheels.mkdir(parents=True)
    _archive(wheels / "missingpkg-1.0.tar.xz", {"raymae_carried_probe/__init__.py": "VALUE = 42\n"})
    _archive(wheels / "json-0.tar.xz", {"json/__init__.py": "raise RuntimeError('shadowed the stdlib')\n"})
    (wheels / "manifest.json").write_text(json.dumps({"packages": [
        {"name": "missingpkg", "version": "1.0", "archive": "missingpkg-1.0.tar.xz",
         "modules": ["raymae_carried_probe"]},
        {"name": "json", "version": "0", "archive": "json-0.tar.xz", "modules": ["json"]}]}))
    monkeypatch.setattr(sys, "path", list(sys.path))
    setup = suite.unpack_carried(tmp_path / "carry", tmp_path / "site")
    assert setup["unpacked"] == ["missingpkg==1.0"] and setup["already_importable"] == ["json"]
    assert not (tmp_path / "site" / "json").exists()
    import raymae_carried_probe

    assert raymae_carried_probe.VALUE == 42
    sys.modules.pop("raymae_carried_probe")
    assert suite.python_path(tmp_path / "site").split(":")[:2] == [str(tmp_path / "site"), str(ROOT)]


def test_the_folder_pack_sh_builds_is_never_committed():
    ignored = subprocess.run(["git", "check-ignore", "-q", ".device/wheels/manifest.json"], cwd=ROOT)
    assert ignored.returncode == 0
    script = ROOT / "benchmarks" / "device" / "pack.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    usage = subprocess.run(["bash", str(script), "--help"], capture_output=True, text=True)
    assert usage.returncode == 0 and "64 MiB" in usage.stdout
