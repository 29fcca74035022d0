"""The ``raymae`` command line: train, evaluate, score, report, synth, demo."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

from raymae.config import MODEL_SIZES, ConfigError, RaymaeConfig
from raymae.recipes import RECIPES, default_recipe_name, recipe
from raymae.data import MAX_PIXELS
from raymae.scoring import PRECISIONS
from raymae.sources import MAX_FILE_BYTES, MAX_TAR_MEMBERS

log = logging.getLogger("raymae")


# ------------------------------------------------------------------ arguments
def _count(minimum: int):
    def parse(value: str) -> int:
        try:
            n = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
        if n < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, not {n}")
        return n
    return parse


_positive = _count(1)
_non_negative = _count(0)


def _loader_workers(value: str) -> int | None:
    """``auto`` (None: decided per worker) or a count of 0 or more."""
    if value == "auto":
        return None
    try:
        return _non_negative(value)
    except argparse.ArgumentTypeError as e:
        raise argparse.ArgumentTypeError(f"{e} (a count of 0 or more, or auto)") from None


def add_recipe_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("recipe (a named recipe, changed by --config, then by these flags)")
    g.add_argument("--recipe", choices=sorted(RECIPES),
                   help="cpu: the best measured from scratch on CPUs (default without --gpu); gpu: ViT-B/16 "
                        "for GPUs (default with --gpu); paper: ISSTAD's frozen encoder, for a pretrained --init")
    g.add_argument("--config", help="JSON file with a full or partial RaymaeConfig; its \"recipe\" key, "
                                    "if any, names the recipe it changes")
    g.add_argument("--model-size", choices=sorted(MODEL_SIZES))
    g.add_argument("--image-size", type=_positive)
    g.add_argument("--patch-size", type=_positive)
    g.add_argument("--stage1-epochs", type=_non_negative, help="stage-1 length in epochs (instead of steps)")
    g.add_argument("--stage2-epochs", type=_non_negative, help="stage-2 length in epochs (instead of steps)")
    g.add_argument("--stage1-steps", type=_positive, help="stage-1 length in optimiser steps")
    g.add_argument("--stage2-steps", type=_positive, help="stage-2 length in optimiser steps")
    g.add_argument("--batch-size", type=_positive, help="per-worker batch size of both stages")
    g.add_argument("--mask-ratio", type=float)
    g.add_argument("--deep-supervision", action="store_true", default=None,
                   help="a pixel-classification head after every decoder block")
    g.add_argument("--pixel-head", choices=["linear", "fusion", "compare"],
                   help="stage-2 pixel classifier: linear per patch (paper), fused with 3x3 convolutions over the "
                        "input, or (compare) over the input and its reconstruction")
    g.add_argument("--train-encoder", action="store_true", default=None,
                   help="train the encoder in stage 2 too (it is frozen by default)")
    g.add_argument("--foreground-only", action="store_true", default=None,
                   help="keep synthetic defects on the object (object categories, plain background)")
    g.add_argument("--target-fpr", type=float,
                   help="share of normal images the calibrated threshold may flag (default 0.01)")
    g.add_argument("--seed", type=int)


def recipe_from_args(args: argparse.Namespace) -> RaymaeConfig:
    overrides = _read_config_file(args.config) if args.config else {}
    name = args.recipe or overrides.pop("recipe", None) or default_recipe_name(getattr(args, "gpu", False))
    overrides.pop("recipe", None)
    cfg = recipe(name)
    if overrides:
        cfg = RaymaeConfig.from_dict(_merge(cfg.to_dict(), overrides))
    model = {k: v for k, v in dict(size=args.model_size, image_size=args.image_size,
                                   patch_size=args.patch_size,
                                   deep_supervision=args.deep_supervision,
                                   pixel_head=args.pixel_head).items() if v is not None}
    cfg.model = dataclasses.replace(cfg.model, **model)
    for stage, epochs, steps in ((cfg.stage1, args.stage1_epochs, args.stage1_steps),
                                 (cfg.stage2, args.stage2_epochs, args.stage2_steps)):
        if epochs is not None and steps is not None:
            raise ConfigError("give a stage's length in epochs or in steps, not both")
        if epochs is not None:
            stage.epochs, stage.steps = epochs, 0
            stage.warmup_epochs = min(stage.warmup_epochs, epochs)
        if steps is not None:
            stage.steps = steps
            stage.warmup_steps = min(stage.warmup_steps, steps)
        if args.batch_size is not None:
            stage.batch_size = args.batch_size
    if args.mask_ratio is not None:
        if not 0 <= args.mask_ratio < 1:
            raise ConfigError(f"--mask-ratio must be in [0, 1), not {args.mask_ratio}")
        cfg.stage1.mask_ratio = args.mask_ratio
    if args.foreground_only:
        cfg.corruption.foreground_only = True
    if args.target_fpr is not None:
        if not 0 < args.target_fpr < 1:
            raise ConfigError(f"--target-fpr must be between 0 and 1, not {args.target_fpr}")
        cfg.calibration.target_fpr = args.target_fpr
    if args.train_encoder:
        cfg.stage2.freeze_encoder = False
    if args.seed is not None:
        cfg.seed = args.seed
    cfg.model.resolved()  # validates size / patch / widths now, not on the workers
    return cfg


def _read_config_file(path: str) -> dict:
    """The JSON object of a --config file, with a readable error for anything else."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"--config file not found: {path}") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"--config file {path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config file {path} must hold a JSON object of settings")
    return data


def _merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for k, v in override.items():
        out[k] = _merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="raymae", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train both stages with Ray Train and write the model artifact")
    t.add_argument("--data", required=True, metavar="URI",
                   help="normal images: a folder or s3:// prefix (read recursively) or a glob; or an MVTec-AD "
                        "style folder, whose train/good is used")
    t.add_argument("--out", required=True, help="model folder to write: local path or s3://")
    t.add_argument("--workers", type=_positive, default=1, help="Ray Train workers (default 1)")
    t.add_argument("--gpu", action="store_true", help="one GPU per worker (nccl)")
    t.add_argument("--init", help="pretrained MAE weights: .safetensors/.pth file or a timm model name")
    t.add_argument("--storage", default="./raymae-runs",
                   help="Ray Train storage for checkpoints (local or s3://; shared storage on a cluster)")
    t.add_argument("--run-name", help="resume this run (default: derived from data, out and recipe)")
    t.add_argument("--max-failures", type=int, default=3, help="worker-group restarts before giving up")
    t.add_argument("--local", action="store_true", help="train in this process, without Ray")
    t.add_argument("--loader-workers", type=_loader_workers, default=None, metavar="N|auto",
                   help="DataLoader processes per worker that corrupt stage 2's batches (default auto: on a GPU "
                        "every core of the worker's share of its machine but one, at most 12; on CPUs none)")
    add_recipe_arguments(t)

    e = sub.add_parser("evaluate", help="metrics of a model on labelled test images",
                       description="Evaluate on an MVTec-AD style folder (--data), or on folders of normal and "
                                   "defective images (--normal, --abnormal) with optional masks (--masks). "
                                   "Without masks only the image metrics are computed.")
    e.add_argument("--data", metavar="URI", help="MVTec-AD style folder with test/ and ground_truth/")
    e.add_argument("--normal", nargs="+", metavar="URI",
                   help="folders, s3:// prefixes or globs of normal test images (instead of --data)")
    e.add_argument("--abnormal", nargs="+", metavar="URI",
                   help="folders, prefixes or globs of defective test images, each a defect type named after it")
    e.add_argument("--masks", nargs="+", metavar="URI",
                   help="optional: folders of masks (0 normal, >0 defect), paired with the defective images "
                        "by name: <image stem>.png or <image stem>_mask.png")
    e.add_argument("--model", required=True, help="model folder written by raymae train")
    e.add_argument("--output", required=True,
                   help="folder for metrics.json, scores.parquet and report.html (local or s3://)")
    e.add_argument("--batch-size", type=_positive, default=32)
    e.add_argument("--gpu", action="store_true")
    e.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="of the model: auto (default) is bf16 on a GPU, fp32 on CPU")

    sc = sub.add_parser("score", help="score image files and tar shards with Ray Data into Parquet",
                        description="Score every image under the inputs and write one Parquet partition "
                                    "<output>/date=YYYY-MM-DD/ (rerunning a date replaces it). "
                                    "{date} in --input and --output is replaced by the date.")
    sc.add_argument("--input", required=True, nargs="+", metavar="URI",
                    help="prefixes (recursive), globs or files, local or s3://; images and .tar shards")
    sc.add_argument("--model", required=True, help="model folder written by raymae train")
    sc.add_argument("--output", required=True, help="dataset root, local or s3://")
    sc.add_argument("--date", required=True, help="the partition to write, YYYY-MM-DD")
    sc.add_argument("--batch-size", type=_positive,
                    help="images per model call (default 32, with --gpu 256)")
    sc.add_argument("--actors", type=_positive, default=1, help="model replicas (default 1)")
    sc.add_argument("--gpu", action="store_true", help="one GPU per model replica")
    sc.add_argument("--cpus-per-actor", type=float, default=1.0,
                    help="CPUs each model replica reserves (default 1)")
    sc.add_argument("--threads-per-actor", type=_positive,
                    help="torch threads of each replica on CPU (default: this machine's cores / --actors)")
    sc.add_argument("--heatmap-size", type=_positive, default=64, help="heatmap PNG side (default 64)")
    sc.add_argument("--precision", choices=PRECISIONS, default="auto",
                    help="of the model: auto (default) is bf16 on a GPU, fp32 on CPU")
    sc.add_argument("--jpeg-on-device", action="store_true",
                    help="the model replicas decode JPEGs on their device (nvJPEG with --gpu) instead of CPU "
                         "tasks decoding everything with Pillow; for when the CPUs cannot keep the GPU busy")
    sc.add_argument("--report", metavar="URI",
                    help="then write the night's HTML report (raymae report) into this folder, local or s3://")

    lim = sc.add_argument_group("input limits (what is over one is an error row, the run goes on)")
    lim.add_argument("--max-pixels", type=_positive, default=MAX_PIXELS,
                     help=f"pixels per image; more is refused as a decompression bomb (default {MAX_PIXELS})")
    lim.add_argument("--max-file-bytes", type=_positive, default=MAX_FILE_BYTES,
                     help=f"bytes per file or tar member, refused unread above (default {MAX_FILE_BYTES})")
    lim.add_argument("--max-tar-members", type=_positive, default=MAX_TAR_MEMBERS,
                     help=f"members read per tar archive (default {MAX_TAR_MEMBERS})")

    r = sub.add_parser("report", help="an HTML page of one night's scores: top images, errors, trends",
                       description="Read the scoring output and write <output>/index.html, one self-contained "
                                   "page: summary, the most anomalous images with their heatmaps, the errors "
                                   "by reason, the score distribution, trends over earlier nights and "
                                   "folder breakdowns. {date} in --output is replaced by the date.")
    r.add_argument("--scores", required=True, metavar="URI", help="the --output of raymae score, local or s3://")
    r.add_argument("--date", required=True, help="the night to report, YYYY-MM-DD")
    r.add_argument("--output", required=True, metavar="DIR", help="folder for index.html, local or s3://")
    r.add_argument("--top", type=_positive, default=20, help="most anomalous images shown (default 20)")
    r.add_argument("--history", type=_positive, default=90, metavar="NIGHTS",
                   help="nights in the trend, this one included (default 90)")

    s = sub.add_parser("synth", help="write a synthetic MVTec-AD style dataset")
    s.add_argument("--out", required=True)
    s.add_argument("--size", type=_positive, default=64)
    s.add_argument("--train", type=_positive, default=120)
    s.add_argument("--seed", type=int, default=0)

    d = sub.add_parser("demo", help="synthesise data, train on local Ray, evaluate, score: the whole path in minutes")
    d.add_argument("--workdir", default=None, help="where data, model and results go (default: a temp dir)")
    d.add_argument("--workers", type=_positive, default=2)
    return parser


# ------------------------------------------------------------------ commands
def cmd_train(args: argparse.Namespace) -> int:
    from raymae.data import list_train

    cfg = recipe_from_args(args)
    list_train(args.data)  # fail fast with a clear message, before the note below or a Ray start
    if cfg.stage2.freeze_encoder and not args.init:
        print("raymae train: note: stage 2 keeps the encoder frozen (the paper's setting, made for a pretrained "
              "MAE), but no --init gives one; with an encoder trained from scratch, --train-encoder (or the "
              "cpu or gpu recipe) usually detects better (docs/experiments.md)", file=sys.stderr)
    if args.local:
        from raymae.training.local import train_local

        artifact = train_local(args.data, cfg, "cuda" if args.gpu else "cpu", args.init,
                               loader_workers=args.loader_workers)
        artifact.save(args.out)
    else:
        from raymae.training.ray_driver import TrainJob, run_training

        _init_ray()
        artifact = run_training(TrainJob(args.data, args.out, cfg, args.workers, args.gpu, args.init,
                                         args.storage, args.run_name, args.max_failures,
                                         args.loader_workers))
    c = artifact.calibration
    print(f"model {artifact.model_id} written to {args.out}\n"
          f"map rule {cfg_rule(artifact.config)}  threshold {c.threshold:.4g} "
          f"(target FPR {c.target_fpr:.3g} on {c.normal_scores['n']} held-back normal images)")
    return 0


def cfg_rule(cfg: RaymaeConfig) -> str:
    return f"{cfg.anomaly_map.combination}/{cfg.anomaly_map.score_rule}"


def evaluation_records(args: argparse.Namespace) -> list:
    """The labelled test images `raymae evaluate` was given: --data, or --normal and --abnormal (--masks)."""
    from raymae.data import DataError, list_folders, list_test

    folders = [f for f in ("normal", "abnormal", "masks") if getattr(args, f)]
    if args.data and folders:
        raise DataError(f"give --data (an MVTec-AD folder) or --normal/--abnormal folders, not both "
                        f"(got --data and --{folders[0]})")
    if args.data:
        return list_test(args.data)
    if not (args.normal and args.abnormal):
        raise DataError("give --data (an MVTec-AD folder), or --normal and --abnormal "
                        "(folders of normal and of defective images; --masks optional)")
    return list_folders(args.normal, args.abnormal, args.masks)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from raymae.artifact import ModelArtifact
    from raymae.data import load_images
    from raymae.evaluate import evaluate, format_table, write_outputs
    from raymae.report.evaluation import build_evaluation_report, write_evaluation_report

    records = evaluation_records(args)  # before the model: wrong folders fail fast
    artifact = ModelArtifact.load(args.model)
    test = load_images(records, artifact.config.model.image_size)
    result, test, pred = evaluate(artifact, args.data, "cuda" if args.gpu else "cpu", args.batch_size,
                                  test=test, precision=args.precision)
    write_outputs(result, test, pred, args.output)
    page = write_evaluation_report(build_evaluation_report(result, test, pred), args.output)
    print(format_table(result))
    print(f"wrote {args.output}/metrics.json, {args.output}/scores.parquet and {page}")
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from raymae.scoring import ScoreOptions, plan, run
    from raymae.storage import check_writable

    opts = ScoreOptions(date=args.date, batch_size=args.batch_size, actors=args.actors, gpu=args.gpu,
                        cpus_per_actor=args.cpus_per_actor, threads_per_actor=args.threads_per_actor,
                        heatmap_size=args.heatmap_size, max_pixels=args.max_pixels,
                        precision=args.precision, jpeg_on_device=args.jpeg_on_device,
                        max_file_bytes=args.max_file_bytes,
                        max_tar_members=args.max_tar_members)  # checks the date too
    work = plan([u.replace("{date}", opts.date) for u in args.input], args.model,
                args.output.replace("{date}", opts.date), opts)  # all checks before Ray starts
    report = args.report.replace("{date}", opts.date) if args.report else None
    if report:
        check_writable(report)  # a report folder that cannot be written fails now, not after scoring
    _init_ray()
    print(run(work).format())
    if report:
        try:
            print(write_report(work.output, opts.date, report))
        except (*user_errors(), OSError) as e:  # the night is published: say so, and fail the run, not the input
            print(f"raymae score: failed: the scores of {opts.date} are published under {work.output}, "
                  f"but the report could not be written: {e}", file=sys.stderr)
            return 1
    return 0


def write_report(scores: str, date: str, output: str, top: int = 20, history: int = 90) -> str:
    """Build and write the nightly page; returns what to print."""
    from raymae.report.nightly import build_nightly_report, write_nightly_report

    report = build_nightly_report(scores, date, top, history)
    st = report.summary.stats
    uri = write_nightly_report(report, output)
    nights = len(report.history)
    return (f"report of {date}: {st.images} images, {st.ok} scored, {st.errors} errors, "
            f"{st.anomalous} anomalous; {nights} {'night' if nights == 1 else 'nights'} in the trend\nwrote {uri}")


def cmd_report(args: argparse.Namespace) -> int:
    from raymae.scoring import parse_date

    date = parse_date(args.date)
    print(write_report(args.scores, date, args.output.replace("{date}", date), args.top, args.history))
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from raymae.synthetic import write_mvtec_dataset

    root = write_mvtec_dataset(args.out, n_train=args.train, size=args.size, seed=args.seed)
    print(f"synthetic dataset written to {root}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from raymae.scoring import today

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="raymae-demo-")).resolve()
    data_dir, model_dir, eval_dir = workdir / "data", workdir / "model", workdir / "evaluation"
    base = ["--model-size", "tiny", "--image-size", "64", "--patch-size", "8", "--batch-size", "16"]
    steps = [
        ["synth", "--out", str(data_dir), "--size", "64", "--train", "120"],
        ["train", "--data", str(data_dir), "--out", str(model_dir), "--workers", str(args.workers),
         "--storage", str(workdir / "runs"), "--stage1-epochs", "20", "--stage2-epochs", "15", *base],
        ["evaluate", "--data", str(data_dir), "--model", str(model_dir), "--output", str(eval_dir)],
        # tonight's "factory dump" is the synthetic test folder, scored into a date partition
        ["score", "--input", str(data_dir / "test"), "--model", str(model_dir),
         "--output", str(workdir / "scores"), "--date", today(), "--report", str(workdir / "report")],
    ]
    for step in steps:
        print(f"\n$ raymae {' '.join(step)}", flush=True)
        code = main(step)
        if code:
            return code
    print(f"\ndemo finished: everything is under {workdir}")
    return 0


def with_default_date(argv: list[str]) -> list[str]:
    """The nightly jobs' arguments with ``--date <today, UTC>`` added when they have none."""
    from raymae.scoring import today

    if any(a == "--date" or a.startswith("--date=") for a in argv):
        return argv
    return [*argv, "--date", today()]


def _init_ray() -> None:
    import ray

    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS") or None, log_to_driver=True)


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "score": cmd_score, "report": cmd_report,
            "synth": cmd_synth, "demo": cmd_demo}


# Exceptions that mean wrong input (a one-line message, exit 2), by module. The
# modules that load torch are only imported by the commands that need them, so
# `raymae report` does not pay for torch: an error of theirs implies they were imported.
USER_ERRORS = {"raymae.config": "ConfigError", "raymae.data": "DataError", "raymae.storage": "StorageError",
               "raymae.artifact": "ArtifactError", "raymae.pretrained": "PretrainedError"}


# Exceptions that mean a run started and could not finish (exit 1), looked up the same way.
RUN_FAILURES = {"raymae.scoring": "ScoringFailed"}


def _imported(errors: dict[str, str]) -> tuple[type[Exception], ...]:
    return tuple(getattr(sys.modules[m], name) for m, name in errors.items() if m in sys.modules)


def user_errors() -> tuple[type[Exception], ...]:
    return _imported(USER_ERRORS)


def run_failures() -> tuple[type[Exception], ...]:
    return _imported(RUN_FAILURES)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except Exception as e:
        if isinstance(e, user_errors()):
            print(f"raymae {args.command}: error: {e}", file=sys.stderr)
            return 2
        if isinstance(e, run_failures()):  # the run itself failed, not its arguments
            print(f"raymae {args.command}: failed: {e}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
