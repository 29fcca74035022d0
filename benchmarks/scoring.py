"""How close nightly scoring comes to the model's own speed, and how its memory grows.

    python benchmarks/scoring.py --images PATH/TO/magnetic_tile/test --sizes 1000 8000

Three ways to score the same image files with the same model:

  (a) the model alone: ``Predictor.predict`` on pre-decoded uint8 arrays in a tight loop (the limit);
  (b) what a user writes without raymae: one script with a PyTorch DataLoader that reads and
      decodes the files, runs the model, PNG-encodes the heatmaps and writes one Parquet file;
  (c) ``raymae score``, end to end, files to a Parquet partition, on a local Ray.

(b) and (c) run in child processes; peak memory is the summed proportional set size (PSS)
of the child and all its descendants (Ray's raylet, GCS, object store and workers
included), sampled every 0.2 s. Writes ``benchmarks/results/scoring-<machine>.json``.

Without ``--model`` it scores with an untrained model of the ``cpu`` quality recipe's
architecture: speed does not depend on the weights.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from quality import machine, machine_tag  # noqa: E402
from raymae.recipes import recipe  # noqa: E402


# ------------------------------------------------------------------ helpers
def make_model(out: str) -> str:
    """An untrained stage-2 model of the cpu recipe's shape, saved as a model folder."""
    from raymae.artifact import Calibration, ModelArtifact
    from raymae.model import build_model

    cfg = recipe("cpu")
    model = build_model(cfg.model, stage2=True)
    ModelArtifact(cfg, model.state_dict(), Calibration(threshold=0.5, target_fpr=0.01,
                                                       normal_scores={"n": 0})).save(out)
    return out


def make_images(source: str, n: int, out: Path) -> list[str]:
    """``n`` image files: the source images copied round-robin under distinct names."""
    from raymae.sources import IMAGE, list_sources

    files = [s.uri for s in list_sources([source]).sources if s.kind == IMAGE]
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        src = files[i % len(files)]
        dest = out / f"{i // 1000:03d}" / f"{i:06d}{Path(src).suffix.lower()}"
        dest.parent.mkdir(exist_ok=True)
        shutil.copyfile(src, dest)
        paths.append(str(dest))
    return paths


def tree_pss_bytes(root: int) -> int:
    """Summed PSS of ``root`` and all its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        stack += children.get(pid, [])
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            pass
    return total


def run_measured(argv: list[str]) -> dict:
    """Run a child process; its JSON result line plus its peak tree PSS and wall time."""
    start = time.time()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, tree_pss_bytes(proc.pid))
            time.sleep(0.2)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    out, err = proc.communicate()
    done.set()
    t.join()
    if proc.returncode:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{err[-3000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    result.update(peak_memory_mib=round(peak / 2**20, 1), process_wall_s=round(time.time() - start, 2))
    return result


# ------------------------------------------------------------------ (a) (b) (c), each in its own process
def model_alone(model: str, images: list[str], batch_size: int, threads: int) -> dict:
    import numpy as np
    import torch

    from raymae.artifact import ModelArtifact
    from raymae.data import load_image

    torch.set_num_threads(threads)
    predictor = ModelArtifact.load(model).predictor()
    size = predictor.image_size
    pixels = np.stack([load_image(open(p, "rb").read(), size).pixels for p in images])
    predictor.predict(pixels[:batch_size], batch_size)  # warm-up
    start = time.time()
    for i in range(0, len(pixels), batch_size):
        predictor.predict(pixels[i:i + batch_size], batch_size)
    seconds = time.time() - start
    return {"images": len(images), "seconds": round(seconds, 2), "images_per_s": len(images) / seconds}


def dataloader_script(model: str, images: list[str], out: str, batch_size: int, threads: int,
                      workers: int) -> dict:
    """What a user would write: Dataset + DataLoader, the model, a Parquet file."""
    import io

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset

    from raymae.artifact import ModelArtifact

    start = time.time()
    torch.set_num_threads(threads)
    artifact = ModelArtifact.load(model)
    predictor = artifact.predictor()
    size = predictor.image_size

    class Files(Dataset):
        def __len__(self):
            return len(images)

        def __getitem__(self, i):
            img = Image.open(images[i]).convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(img, dtype=np.uint8), images[i]

    rows = {"image_uri": [], "score": [], "heatmap_png": []}
    loader = DataLoader(Files(), batch_size=batch_size, num_workers=workers)
    for pixels, paths in loader:
        pred = predictor.predict(pixels.numpy(), batch_size)
        for path, score, amap in zip(paths, pred.scores, pred.maps):
            small = Image.fromarray(np.uint8(amap / max(amap.max(), 1e-12) * 255)).resize((64, 64))
            buf = io.BytesIO()
            small.save(buf, format="PNG")
            rows["image_uri"].append(path)
            rows["score"].append(float(score))
            rows["heatmap_png"].append(buf.getvalue())
    pq.write_table(pa.table(rows), os.path.join(out, "scores.parquet"))
    seconds = time.time() - start
    return {"images": len(images), "seconds": round(seconds, 2), "images_per_s": len(images) / seconds}


def raymae_score(model: str, folder: str, out: str, batch_size: int,
                 threads_per_actor: int | None = None) -> dict:
    import ray

    from raymae.scoring import ScoreOptions, plan, run

    start = time.time()
    ray.init(include_dashboard=False, log_to_driver=False)
    ray_start = time.time() - start
    summary = run(plan([folder], model, out, ScoreOptions(date="2026-11-26", batch_size=batch_size,
                                                                        threads_per_actor=threads_per_actor)))
    total = time.time() - start
    return {"images": summary.images, "ok": summary.ok, "seconds": round(summary.seconds, 2),
            "images_per_s": summary.images / summary.seconds, "ray_init_s": round(ray_start, 2),
            "seconds_with_ray_init": round(total, 2), "images_per_s_with_ray_init": summary.images / total}


PIPELINES = {  # result name -> child measurement
    "a_model_alone": "a",
    "b_dataloader_script": "b",
    "c_raymae_score": "c",                 # raymae score, one torch thread per actor (--threads-per-actor 1)
    "c_raymae_score_all_threads": "c",     # the actor's torch on every core (the default with one actor)
}


# ------------------------------------------------------------------ main
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", help="folder of images to repeat (e.g. magnetic_tile/test)")
    p.add_argument("--model", help="model folder (default: an untrained cpu-recipe model)")
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 8000])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--loader-workers", type=int, default=os.cpu_count())
    p.add_argument("--out", help="results file (default benchmarks/results/scoring-<machine>.json)")
    p.add_argument("--pipelines", nargs="+", default=list(PIPELINES), choices=list(PIPELINES),
                   help="which measurements to run (default: all)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--args", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.child:  # one measurement inside a child process: print its JSON result
        kw = json.loads(args.args)
        kw["images"] = json.loads(Path(kw["images"]).read_text()) if "images" in kw else None
        fn = {"a": model_alone, "b": dataloader_script, "c": raymae_score}[args.child]
        print(json.dumps(fn(**{k: v for k, v in kw.items() if v is not None})))
        return 0

    threads = os.cpu_count()
    work = Path(tempfile.mkdtemp(prefix="raymae-scoring-bench-"))
    try:
        model = args.model or make_model(str(work / "model"))
        me = [sys.executable, str(Path(__file__).resolve())]
        results = {}
        for n in args.sizes:
            folder = work / f"images-{n}"
            paths = make_images(args.images, n, folder)
            (work / f"list-{n}.json").write_text(json.dumps(paths))
            kwargs = {
                "a_model_alone": dict(images=str(work / f"list-{n}.json"), threads=threads),
                "b_dataloader_script": dict(images=str(work / f"list-{n}.json"), out=str(work / f"b-{n}"),
                                            threads=threads, workers=args.loader_workers),
                "c_raymae_score": dict(folder=str(folder), out=str(work / f"c-{n}"), threads_per_actor=1),
                "c_raymae_score_all_threads": dict(folder=str(folder), out=str(work / f"c2-{n}"),
                                                   threads_per_actor=threads),
            }
            (work / f"b-{n}").mkdir()
            runs = {name: run_measured(me + ["--child", PIPELINES[name], "--args", json.dumps(
                dict(kwargs[name], model=model, batch_size=args.batch_size))]) for name in args.pipelines}
            speed = {name: r["images_per_s"] for name, r in runs.items()}
            runs["ratios"] = {f"{c}/{ref}": speed[c] / speed[ref] for c in speed if c.startswith("c_")
                              for ref in ("a_model_alone", "b_dataloader_script") if ref in speed}
            results[str(n)] = runs
            print(f"{n} images: " + "  ".join(f"{k} {v:.1f}/s" for k, v in speed.items()) + "  "
                  + "  ".join(f"{k} {v:.2f}" for k, v in runs["ratios"].items()) + "  peak memory "
                  + "  ".join(f"{k} {r['peak_memory_mib']:.0f} MiB" for k, r in runs.items() if k != "ratios"),
                  flush=True)
            shutil.rmtree(folder)
        small, large = str(min(args.sizes)), str(max(args.sizes))
        record = {
            "command": "python benchmarks/scoring.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "machine": machine(),
            "model": args.model or "untrained model of the cpu quality recipe (tiny ViT, 128 px, patch 8, depth 6)",
            "images_source": args.images,
            "batch_size": args.batch_size,
            "loader_workers": args.loader_workers,
            "results": results,
            "memory_growth": {name: results[large][name]["peak_memory_mib"] / results[small][name]["peak_memory_mib"]
                              for name in args.pipelines},
        }
        out = Path(args.out) if args.out else HERE / "results" / f"scoring-{machine_tag()}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(record, indent=2))
        print(f"peak memory growth {small} -> {large} images: "
              + "  ".join(f"{k} {v:.2f}x" for k, v in record["memory_growth"].items()) + f"\nwrote {out}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
