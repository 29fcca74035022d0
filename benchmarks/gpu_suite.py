"""One prepared GPU run: the model, ``raymae score --gpu`` through Ray Data and
``raymae train --gpu`` through Ray Train, measured in at most 9 minutes.

On the GPU machine (docs/gpu-suite.md; the folder .device/ is built here by
benchmarks/device/pack.sh and carried along)::

    python benchmarks/gpu_suite.py --carry .device --out "$OUT/gpu-suite-h200.json"

Anywhere, at toy size, in a few minutes (tests/test_gpu_suite.py runs it)::

    python benchmarks/gpu_suite.py --smoke --device cpu --out /tmp/suite.json

Phases, each written into the results file as it finishes (the log is beside it, .log):

  setup  unpack the carried wheels whose modules this machine cannot import, put them and
         the repository on PYTHONPATH (children and Ray workers inherit it); find the data.
  a      the model alone: Predictor.predict (stage-2 forward, anomaly map, heatmap
         downsampling) on pre-decoded uint8 batches, fp32 and bf16, for the gpu and the cpu
         recipes' models: images/s and peak GPU memory.
  b      raymae score end to end through Ray Data (one model actor, on the GPU with
         --device cuda) on JPEG files (magnetic tile test images repeated under distinct
         names): images/s over the job, the ratio to (a), GPU busy share sampled with
         nvidia-smi, and the seconds each pipeline stage ran (decode, model, PNG, write).
         Then once more with the JPEGs decoded on the device (--jpeg-on-device).
  c      raymae train --workers 1 through Ray Train (NCCL on the GPU): the driver is
         killed after a stage-1 checkpoint, the resubmission with the same run name resumes
         there, finishes both stages and writes the artifact.
  d      if the budget leaves minutes: benchmarks/quality.py with the gpu recipe and what is
         left of the budget (on the carried subset of magnetic tile unless --data says more).

Speed does not depend on the weights: (a) and (b) use untrained models.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BUDGET_S = 540  # 9 minutes: a device run may last 10, and starting one takes some
DATE = "2026-11-26"


# ------------------------------------------------------------------ sizes
class Sizes:
    """How much each phase does: the real run, or a toy one for --smoke."""

    def __init__(self, smoke: bool):
        self.smoke = smoke
        self.a_images = 8 if smoke else 4096          # pre-decoded images per measurement
        self.a_batch = 4 if smoke else 256
        self.b_images = 48 if smoke else 20_000       # files scored
        self.b_batch = 16 if smoke else 256
        self.c_epochs = (3, 1) if smoke else (6, 3)   # stage-1, stage-2 epochs of the training run
        self.c_kill_after = 1 if smoke else 2         # kill the driver after this stage-1 epoch
        self.d_min_s = 60 if smoke else 180           # phase d runs only with this much budget left


# ------------------------------------------------------------------ results and log
class Run:
    """The results file (rewritten after each phase), the log and the time budget."""

    def __init__(self, out: Path, budget_s: float, record: dict):
        self.out = out
        self.log_path = out.with_suffix(".log")
        out.parent.mkdir(parents=True, exist_ok=True)
        self.log_file = open(self.log_path, "a", buffering=1)
        self.start = time.time()
        self.budget_s = budget_s
        self.record = record

    def left(self) -> float:
        return self.budget_s - (time.time() - self.start)

    def say(self, message: str) -> None:
        line = f"[{time.time() - self.start:7.1f}s] {message}"
        print(line, flush=True)
        self.log_file.write(line + "\n")

    def save(self, **fields) -> None:
        self.record.update(fields, wall_seconds=round(time.time() - self.start, 1))
        self.out.write_text(json.dumps(self.record, indent=2, default=_jsonable))

    def child(self, argv: list[str], timeout: float, env: dict | None = None) -> int:
        """Run a child process with its output in the log; its exit code (-9 when it ran out of time)."""
        self.say("$ " + " ".join(argv))
        proc = subprocess.Popen(argv, stdout=self.log_file, stderr=subprocess.STDOUT, env=env or os.environ.copy(),
                                cwd=ROOT, start_new_session=True)
        try:
            return proc.wait(timeout=max(timeout, 1))
        except subprocess.TimeoutExpired:
            self.say(f"out of time after {timeout:.0f} s: stopping it")
            _kill_group(proc)
            return -9


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _jsonable(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def machine(device: str) -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpu_cores": os.cpu_count()}
    try:
        import torch

        info["torch"] = torch.__version__
        if device == "cuda" and torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    except ImportError:
        pass
    return info


# ------------------------------------------------------------------ setup
def unpack_carried(carry: Path, dest: Path) -> dict:
    """Unpack each carried package whose modules cannot be imported here into ``dest``."""
    manifest = carry / "wheels" / "manifest.json"
    if not manifest.exists():
        return {"manifest": None}
    start = time.time()
    unpacked, present = [], []
    for entry in json.loads(manifest.read_text())["packages"]:
        if all(importlib.util.find_spec(m) is not None for m in entry["modules"]):
            present.append(entry["name"])
            continue
        dest.mkdir(parents=True, exist_ok=True)
        with tarfile.open(carry / "wheels" / entry["archive"]) as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, filter="data")
            else:
                tar.extractall(dest)
        unpacked.append(f"{entry['name']}=={entry['version']}")
    if unpacked:
        sys.path.insert(0, str(dest))
        importlib.invalidate_caches()
    return {"manifest": str(manifest), "unpacked": unpacked, "already_importable": present,
            "into": str(dest) if unpacked else None, "seconds": round(time.time() - start, 1)}


def python_path(deps: Path | None) -> str:
    """PYTHONPATH for children and Ray workers: the unpacked packages and this repository."""
    parts = [str(deps)] if deps is not None and deps.exists() else []
    parts.append(str(ROOT))
    if os.environ.get("PYTHONPATH"):
        parts.append(os.environ["PYTHONPATH"])
    return os.pathsep.join(parts)


def versions() -> dict:
    out = {}
    for name in ("torch", "torchvision", "timm", "numpy", "ray", "scipy", "sklearn", "pyarrow", "pydantic"):
        try:
            out[name] = __import__(name).__version__
        except Exception as e:  # noqa: BLE001 -- a missing package is a result here
            out[name] = f"missing: {type(e).__name__}: {e}"
    return out


def find_data(args, carry: Path | None, work: Path) -> Path:
    """--data; else the carried magnetic tile subset; else the shared copy; else (smoke) synthetic."""
    if args.data:
        return Path(args.data)
    if args.smoke:
        from raymae.synthetic import write_mvtec_dataset

        root = write_mvtec_dataset(work / "synthetic", n_train=40, n_test_good=8, n_test_defect_per_type=4,
                                   size=64, seed=0)
        # half the test images as JPEG files, so the JPEG paths run too
        from PIL import Image

        for i, png in enumerate(sorted(root.glob("test/*/*.png"))):
            if i % 2 == 0:
                Image.open(png).convert("RGB").save(png.with_suffix(".jpg"), quality=92)
                png.unlink()
        return root
    beside_checkout = ROOT.parent / "shared" / "data" / "magnetic_tile"
    for candidate in ([carry / "data" / "magnetic_tile"] if carry else []) + [beside_checkout]:
        if (candidate / "train" / "good").is_dir():
            return candidate
    raise SystemExit("no magnetic tile data: pass --data, or carry a folder built by benchmarks/device/pack.sh")


def test_images(data: Path) -> list[Path]:
    return sorted(p for p in (data / "test").rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))


# ------------------------------------------------------------------ (a) the model alone
def phase_a(run: Run, sizes: Sizes, device: str, data: Path) -> dict:
    import numpy as np
    import torch

    from raymae.data import load_image
    from raymae.inference import Predictor
    from raymae.model import build_model
    from raymae.recipes import recipe

    files = test_images(data)
    out = {}
    for name in ("gpu", "cpu"):
        cfg = recipe(name)
        if sizes.smoke and name == "gpu":  # ViT-B takes seconds an image on 2 cores: its widths, 2 blocks
            cfg.model = dataclasses.replace(cfg.model, depth=1, decoder_depth=1, stage2_extra_blocks=0)
        size = cfg.model.image_size
        decoded = np.stack([load_image(f.read_bytes(), size).pixels for f in files[:256]])
        images = decoded[np.arange(sizes.a_images) % len(decoded)]
        torch.manual_seed(0)
        model = build_model(cfg.model, stage2=True)
        m = cfg.model.resolved()
        row = {"model": f"ViT {m.size} ({m.embed_dim} wide, {m.depth} + {m.decoder_depth} + "
                        f"{m.stage2_extra_blocks} blocks), {size} px, patch {m.patch_size}", "images": len(images),
               "batch_size": sizes.a_batch}
        scores = {}
        for precision in ("fp32", "bf16"):
            if run.left() < 30:
                row[precision] = "skipped: out of time"
                continue
            predictor = Predictor(model, cfg, device, precision)
            predictor.predict(images[:sizes.a_batch], sizes.a_batch, map_size=64)  # warm-up
            _sync(device)
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            start = time.time()
            parts = [predictor.predict(images[k:k + sizes.a_batch], sizes.a_batch, map_size=64).scores
                     for k in range(0, len(images), sizes.a_batch)]
            _sync(device)
            seconds = time.time() - start
            scores[precision] = np.concatenate(parts)
            row[precision] = {"images_per_s": round(len(images) / seconds, 1), "seconds": round(seconds, 2)}
            if device == "cuda":
                row[precision]["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            run.say(f"(a) {name} recipe {precision}: {row[precision]}")
        if len(scores) == 2:
            spread = float(scores["fp32"].max() - scores["fp32"].min()) or 1.0
            row["bf16_max_score_change_of_spread"] = float(np.abs(scores["bf16"] - scores["fp32"]).max() / spread)
        out[name] = row
        del model
        if device == "cuda":
            torch.cuda.empty_cache()
    return out


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


# ------------------------------------------------------------------ (b) raymae score through Ray Data
class GpuSampler:
    """nvidia-smi's utilization and memory every 250 ms, in a background process."""

    def __init__(self):
        self.samples: list[tuple[float, float, float]] = []
        self.proc = None
        if shutil.which("nvidia-smi") is None:
            return
        self.proc = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used",
                                      "--format=csv,noheader,nounits", "-lms", "250"],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                util, mem = (float(v) for v in line.split(",")[:2])
            except ValueError:
                continue
            self.samples.append((time.time(), util, mem))

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait()

    def summary(self, start: float, end: float) -> dict | None:
        inside = [s for s in self.samples if start <= s[0] <= end]
        if not inside:
            return None
        return {"busy_share": round(sum(s[1] for s in inside) / len(inside) / 100, 3),
                "samples": len(inside), "max_memory_used_mib": max(s[2] for s in inside)}


def make_model(cfg_name: str, out: Path) -> str:
    """An untrained stage-2 model of a recipe, saved as a model folder."""
    import torch

    from raymae.artifact import Calibration, ModelArtifact
    from raymae.model import build_model
    from raymae.recipes import recipe

    cfg = recipe(cfg_name)
    torch.manual_seed(0)
    model = build_model(cfg.model, stage2=True)
    ModelArtifact(cfg, model.state_dict(), Calibration(threshold=0.5, target_fpr=0.01,
                                                       normal_scores={"n": 0})).save(str(out))
    return str(out)


def make_night(sources: list[Path], n: int, out: Path) -> Path:
    """``n`` files: the sources linked (or copied) round-robin under distinct names, 1000 a folder."""
    out.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        src = sources[i % len(sources)]
        dest = out / f"{i // 1000:03d}" / f"{i:06d}{src.suffix.lower()}"
        dest.parent.mkdir(exist_ok=True)
        try:
            os.link(src, dest)
        except OSError:
            shutil.copyfile(src, dest)
    return out


def score_child(model: str, folder: str, output: str, gpu: bool, batch_size: int, jpeg_on_device: bool,
                result: str) -> None:
    """In a child process: what ``raymae score`` does (connected to the suite's Ray), timed."""
    import ray

    from raymae.scoring import ScoreOptions, plan, run

    ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
    # decoding in CPU tasks apart from the model actor, as on a GPU also when the smoke run is on CPU
    opts = ScoreOptions(date=DATE, gpu=gpu, batch_size=batch_size, jpeg_on_device=jpeg_on_device,
                        decode_in_actor=None if jpeg_on_device else False)
    work = plan([folder], model, output, opts)
    start = time.time()
    summary = run(work)
    end = time.time()
    Path(result).write_text(json.dumps({
        "images": summary.images, "ok": summary.ok, "errors": summary.errors, "seconds": round(summary.seconds, 2),
        "images_per_s": round(summary.images_per_second, 1), "batch_size": opts.batch_size,
        "precision": opts.precision, "decode": "on the device (torchvision.io.decode_jpeg)" if jpeg_on_device
        else ("CPU tasks (Pillow)" if not opts.decode_in_actor else "in the actor (Pillow)"),
        "stages": summary.stages, "start": start, "end": end}))


def phase_b(run: Run, sizes: Sizes, device: str, data: Path, work: Path, env: dict, a: dict) -> dict:
    gpu = device == "cuda"
    recipe_name = "gpu" if gpu else "cpu"
    model = make_model(recipe_name, work / f"model-{recipe_name}")
    jpegs = [p for p in test_images(data) if p.suffix.lower() in (".jpg", ".jpeg")]
    night = make_night(jpegs or test_images(data), sizes.b_images, work / "night")
    out = {"recipe": recipe_name, "files": sizes.b_images, "distinct_source_files": len(jpegs)}
    for variant, on_device in (("pillow_decode_tasks", False), ("jpeg_on_device", True)):
        if run.left() < (60 if sizes.smoke else 90):
            out[variant] = "skipped: out of time"
            continue
        result = work / f"b-{variant}.json"
        sampler = GpuSampler() if gpu else None
        code = run.child([sys.executable, str(Path(__file__).resolve()), "--child", "score", "--child-args", json.dumps(
            {"model": model, "folder": str(night), "output": str(work / f"scores-{variant}"), "gpu": gpu,
             "batch_size": sizes.b_batch, "jpeg_on_device": on_device, "result": str(result)})],
            timeout=run.left() - 10, env=env)
        if sampler:
            sampler.stop()
        if code != 0 or not result.exists():
            out[variant] = f"failed (exit code {code}): see the log"
            run.say(f"(b) {variant} failed")
            continue
        row = json.loads(result.read_text())
        if sampler:
            row["gpu"] = sampler.summary(row["start"], row["end"])
        alone = (a.get(recipe_name) or {}).get("bf16" if gpu else "fp32")
        if isinstance(alone, dict):
            row["ratio_to_model_alone"] = round(row["images_per_s"] / alone["images_per_s"], 3)
        out[variant] = row
        run.say(f"(b) {variant}: {row['images_per_s']} images/s, ratio to (a) {row.get('ratio_to_model_alone')}, "
                f"GPU {row.get('gpu')}")
        run.save(b_score_ray_data=out)
    shutil.rmtree(night, ignore_errors=True)
    return out


# ------------------------------------------------------------------ (c) raymae train through Ray Train
def registered(run_dir: Path) -> dict | None:
    """(stage, epoch) of the newest checkpoint Ray Train's controller registered, if any."""
    try:
        snapshot = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
    except (OSError, ValueError):
        return None
    metrics = (snapshot.get("latest_checkpoint_result") or {}).get("metrics") or {}
    return {"stage": metrics["stage"], "epoch": metrics["epoch"]} if "stage" in metrics else None


def phase_c(run: Run, sizes: Sizes, device: str, data: Path, work: Path, env: dict) -> dict:
    import ray
    from ray._private import state as ray_state

    gpu = device == "cuda"
    e1, e2 = sizes.c_epochs
    model_out, storage = work / "trained", work / "runs"
    cmd = [sys.executable, "-m", "raymae", "train", "--data", str(data), "--out", str(model_out),
           "--workers", "1", "--storage", str(storage), "--run-name", "suite-train", "--max-failures", "0",
           "--stage1-epochs", str(e1), "--stage2-epochs", str(e2)]
    if gpu:
        cmd += ["--gpu", "--recipe", "gpu"]
    else:  # toy size: a tiny model on the synthetic 64 px images
        cmd += ["--recipe", "cpu", "--image-size", "64", "--patch-size", "8", "--batch-size", "16"]
    out: dict = {"command": " ".join(cmd[1:]), "epochs": [e1, e2], "backend": "nccl" if gpu else "gloo"}

    # 1. start, and kill the driver once a stage-1 checkpoint is registered
    start = time.time()
    run.say("$ " + " ".join(cmd) + "   (killed after a stage-1 checkpoint)")
    proc = subprocess.Popen(cmd, stdout=run.log_file, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                            start_new_session=True)
    at = None
    while proc.poll() is None and time.time() - start < run.left() - 60:
        r = registered(storage / "suite-train")
        if r and r["stage"] == 1 and r["epoch"] >= sizes.c_kill_after:
            at = r
            break
        time.sleep(0.05)
    _kill_group(proc)
    out["first_run"] = {"killed_at": at, "seconds": round(time.time() - start, 1), "exit_code": proc.returncode}
    if at is None:
        out["status"] = "failed: no stage-1 checkpoint was registered before the driver ended or time ran out"
        return out
    mine = ray.get_runtime_context().get_job_id()
    deadline = time.time() + 120
    while time.time() < deadline and [a for a in ray_state.actors().values()
                                      if "Train" in a["ActorClassName"] and a["State"] == "ALIVE"
                                      and a["JobID"] != mine]:
        time.sleep(0.5)

    # 2. resubmit with the same run name: it resumes and finishes
    start = time.time()
    code = run.child(cmd, timeout=run.left() - 20, env=env)
    out["resubmission"] = {"seconds": round(time.time() - start, 1), "exit_code": code}
    if code != 0:
        out["status"] = f"failed: the resubmission exited with {code}"
        return out
    meta = json.loads((model_out / "config.json").read_text())
    info = meta["info"]
    history = [(h["stage"], h["epoch"]) for h in info["history"]]
    expected = [(1, e) for e in range(1, e1 + 1)] + [(2, e) for e in range(1, e2 + 1)]
    out.update(model_id=meta["model_id"], threshold=meta["calibration"]["threshold"], resumes=info["resumes"],
               epochs_complete_once_each=history == expected, train_seconds=info.get("train_seconds"),
               artifact_bytes=sum(f.stat().st_size for f in model_out.iterdir()))
    resumed = bool(info["resumes"]) and info["resumes"][0]["stage"] == 1 \
        and info["resumes"][0]["epoch"] >= at["epoch"]
    out["status"] = "ok" if resumed and history == expected else "failed: the resubmission did not resume as expected"
    return out


# ------------------------------------------------------------------ (d) quality with what is left
def phase_d(run: Run, sizes: Sizes, device: str, data: Path, work: Path, env: dict) -> dict:
    result = work / "quality.json"
    minutes = max(0.05, (run.left() - (90 if not sizes.smoke else 45)) / 60 * 0.6)
    cmd = [sys.executable, str(ROOT / "benchmarks" / "quality.py"), "--data", str(data), "--out", str(result)]
    if sizes.smoke:
        tiny = ["model.image_size=64", "model.patch_size=8", "model.depth=2", "model.decoder_depth=1",
                "model.stage2_extra_blocks=1", "stage1.steps=4", "stage2.steps=2", "stage1.batch_size=16",
                "stage2.batch_size=16", "anomaly_map.sigma=1.0"]
        cmd += ["--recipe", "cpu"] + [a for s in tiny for a in ("--set", s)]
    else:
        cmd += ["--recipe", "gpu", "--device", device, "--budget-minutes", f"{minutes:.2f}",
                "--loader-workers", str(max(1, (os.cpu_count() or 2) - 4))]
    code = run.child(cmd, timeout=run.left() - 5, env=env)
    if not result.exists():
        return {"status": f"failed (exit code {code}): see the log", "command": " ".join(cmd[1:])}
    record = json.loads(result.read_text())
    shutil.copyfile(result, run.out.with_name(run.out.stem + "-quality.json"))
    return {"status": record.get("status"), "exit_code": code, "command": " ".join(cmd[1:]),
            "train_images": record.get("train_images"), "test_images": record.get("test_images"),
            "metrics": record.get("metrics"), "map_rule": record.get("map_rule_chosen_on_validation"),
            "epochs": [record.get("recipe", {}).get("stage1", {}).get("epochs"),
                       record.get("recipe", {}).get("stage2", {}).get("epochs")],
            "results_file": run.out.stem + "-quality.json"}


# ------------------------------------------------------------------ main
def targets(record: dict) -> dict:
    b = (record.get("b_score_ray_data") or {}).get("pillow_decode_tasks")
    if not isinstance(b, dict):
        return {}
    ratio, speed = b.get("ratio_to_model_alone"), b.get("images_per_s")
    return {"b_over_a": {"target": 0.8, "measured": ratio, "met": ratio is not None and ratio >= 0.8},
            "b_images_per_s": {"target": 1500, "measured": speed, "met": speed is not None and speed >= 1500}}


def run_phase(run: Run, key: str, fn, *args) -> dict | None:
    run.say(f"phase {key}")
    start = time.time()
    try:
        result = fn(*args)
    except Exception as e:  # noqa: BLE001 -- one phase failing must not lose the others
        import traceback

        run.log_file.write(traceback.format_exc())
        result = {"status": f"failed: {type(e).__name__}: {e}"}
    result = dict(result, phase_seconds=round(time.time() - start, 1))
    run.save(**{key: result})
    run.say(f"phase {key} done in {result['phase_seconds']} s")
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--smoke", action="store_true", help="every phase at toy size (minutes on 2 CPU cores)")
    p.add_argument("--carry", help="the folder benchmarks/device/pack.sh built (wheels, data)")
    p.add_argument("--data", help="MVTec-style magnetic tile folder (default: the carried subset)")
    p.add_argument("--out", help="results file (default benchmarks/results/gpu-suite-<gpu>.json)")
    p.add_argument("--budget-s", type=float, default=None,
                   help=f"wall-clock budget (default {DEFAULT_BUDGET_S} s; with --smoke 900)")
    p.add_argument("--phases", nargs="+", default=["a", "b", "c", "d"], choices=["a", "b", "c", "d"])
    p.add_argument("--workdir", help="scratch folder (default: a temporary one, removed at the end)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--child-args", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child == "score":
        score_child(**json.loads(args.child_args))
        return 0

    sizes = Sizes(args.smoke)
    carry = Path(args.carry).resolve() if args.carry else None
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / "gpu-suite-h200.json"
    budget = args.budget_s or (900 if args.smoke else DEFAULT_BUDGET_S)
    run = Run(out, budget, {"suite": "benchmarks/gpu_suite.py", "status": "running", "smoke": args.smoke,
                            "device": args.device, "budget_s": budget,
                            "command": "python benchmarks/gpu_suite.py " + " ".join(argv if argv is not None
                                                                                     else sys.argv[1:])})
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="raymae-gpu-suite-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        # setup: packages first (nothing below imports ray, scipy or torch before this)
        deps = work / "site-packages"
        setup = unpack_carried(carry, deps) if carry else {"manifest": None}
        env = dict(os.environ, PYTHONPATH=python_path(deps), RAY_USAGE_STATS_ENABLED="0")
        os.environ.update(PYTHONPATH=env["PYTHONPATH"], RAY_USAGE_STATS_ENABLED="0")
        if str(ROOT) not in sys.path:
            sys.path.insert(0, str(ROOT))
        setup["versions"] = versions()
        data = find_data(args, carry, work)
        setup["data"] = {"path": str(data), "train_images": len(list((data / "train" / "good").iterdir())),
                         "test_images": len(test_images(data))}
        run.save(machine=machine(args.device), setup=setup)
        run.say(f"setup: {json.dumps(setup)}")
        if args.device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise SystemExit("--device cuda, but torch sees no GPU")

        a = {}
        if "a" in args.phases:
            a = run_phase(run, "a_model_alone", phase_a, run, sizes, args.device, data)
        ray_up = False
        if {"b", "c"} & set(args.phases):
            try:
                import ray

                ray.init(include_dashboard=False, log_to_driver=False)  # one cluster that children join
                env["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
                # Ray turns token authentication on for a new local cluster (the token in ~/.ray):
                # the children must ask for it too
                env.update({k: v for k, v in os.environ.items() if k.startswith("RAY_AUTH")})
                run.say(f"Ray {ray.__version__} started: {ray.cluster_resources()}")
                ray_up = True
            except Exception as e:  # noqa: BLE001 -- (d) needs no Ray: record why and go on
                import traceback

                run.log_file.write(traceback.format_exc())
                run.save(ray_start={"status": f"failed: {type(e).__name__}: {e}"})
                run.say(f"Ray did not start: {e}")
        for key, phase, fn, extra in (("b", "b_score_ray_data", phase_b, (a,)), ("c", "c_train_ray_train", phase_c, ())):
            if key in args.phases and ray_up:
                run_phase(run, phase, fn, run, sizes, args.device, data, work, env, *extra)
            elif key in args.phases:
                run.save(**{phase: {"status": "skipped: Ray did not start"}})
        if "d" in args.phases:
            if run.left() >= sizes.d_min_s:
                run_phase(run, "d_quality", phase_d, run, sizes, args.device, data, work, env)
            else:
                run.save(d_quality={"status": f"skipped: {run.left():.0f} s left"})
        run.save(status="complete", targets=targets(run.record))
        run.say(f"wrote {out} and {run.log_path}")
    finally:
        if "ray" in sys.modules:
            import ray

            ray.shutdown()
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
