"""Post-hoc anomaly-map experiments on a trained model: do border or per-pixel normalisation help?

    python benchmarks/quality.py --data PATH/TO/magnetic_tile --recipe cpu --save-model model-dir
    python benchmarks/map_postprocessing.py --data PATH/TO/magnetic_tile --model model-dir

Computes R and P once for the test set and for the held-back normal training images
(the same split training used), then prints test-set image and pixel AUROC for:

* every combination x smoothing sigma x image-score rule (the product's own rules);
* ``z[...]``: each pixel standardised by the mean and standard deviation of that pixel
  over the held-back normals (uses no test labels);
* ``minus-mean[...]``: only the held-back normals' mean map subtracted;
* ``no-border[...]``: the outer 1/16 of the map ignored by the image score;

how often the map's peak lies on that border band, for normal and defective images, and
how often a defective image's peak lies inside its defect (else its image score comes
from somewhere a normal image could score too); and, with ``--knn-block K``, a PatchCore-style
map (each 3x3-pooled encoder token's distance to its nearest neighbour among the training
images' tokens, arXiv 2106.08265) alone and averaged with the mean map, on validation data
(held-back normals against unseen-family corruptions) and on the test set; and, with
``--score-fusion``, image scores fused rather than maps: P's and R's image scores (R not
min-max normalised per image) each in standard deviations of the held-back normals' scores,
then added or the larger taken, on validation data and on the test set; and, with
``--shift-views``, test-time shift averaging: R and P of the image and of copies shifted by
half a patch (reflect-padded), shifted back and averaged, with the map rule and normal
quantiles chosen again on validation data as training's calibration does.
These are exploratory test-set numbers, for choosing what to build next, never for
choosing the product's rule (that is chosen on validation data).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from raymae import data
from raymae.anomaly_map import combine, gaussian_smooth, image_score, make_anomaly_map
from raymae.artifact import ModelArtifact
from raymae.calibration import calibrate, validation_fakes, validation_masks
from raymae.inference import Predictor
from raymae.metrics import aupro, image_auroc, pixel_auroc
from raymae.training.local import load_training_data

SIGMAS = (2.0, 4.0)


def border_band(size: int) -> np.ndarray:
    """(size, size) bool, True on the outer 1/16 of the image on every side."""
    b = size // 16
    band = np.zeros((size, size), bool)
    band[:b] = band[-b:] = True
    band[:, :b] = band[:, -b:] = True
    return band


@torch.no_grad()
def encoder_tokens(model, cfg, images: np.ndarray, block: int, batch_size: int = 64) -> torch.Tensor:
    """(N, S, S, 3) uint8 -> (N, D, g, g) tokens after encoder block ``block`` (0-based), each
    averaged with its 3x3 neighbours (PatchCore's locally aware patch features)."""
    from raymae.inference import model_input

    out = []
    for start in range(0, len(images), batch_size):
        x = model.patch_embed(model_input(cfg, images[start:start + batch_size])) + model.pos_embed[:, 1:, :]
        x = torch.cat([(model.cls_token + model.pos_embed[:, :1, :]).expand(len(x), -1, -1), x], dim=1)
        for blk in model.blocks[:block + 1]:
            x = blk(x)
        tokens = x[:, 1:, :]
        side = int(tokens.shape[1] ** 0.5)
        grid = tokens.transpose(1, 2).reshape(len(tokens), -1, side, side)
        out.append(torch.nn.functional.avg_pool2d(grid, 3, stride=1, padding=1, count_include_pad=False))
    return torch.cat(out)


@torch.no_grad()
def knn_maps(tokens: torch.Tensor, bank: torch.Tensor, size: int, chunk: int = 4096) -> torch.Tensor:
    """(N, D, g, g) tokens -> (N, size, size) distance of each token to its nearest bank row (M, D),
    bilinearly upsampled: PatchCore's anomaly map on raymae's own encoder."""
    n, d, g, _ = tokens.shape
    flat = tokens.permute(0, 2, 3, 1).reshape(-1, d)
    nearest = torch.cat([torch.cdist(flat[i:i + chunk], bank).min(dim=1).values
                         for i in range(0, len(flat), chunk)])
    grid = nearest.reshape(n, 1, g, g)
    return torch.nn.functional.interpolate(grid, size=(size, size), mode="bilinear", align_corners=False)[:, 0]


def knn_study(artifact, data_uri: str, test, raw_test, raw_normal, holdout: np.ndarray,
              block: int, bank_size: int) -> None:
    """The kNN map alone and averaged with the model's mean map (both in units of the held-back
    normals' maps, as the normal_mean rule does), on validation data and on the test set."""
    from raymae.anomaly_map import normal_quantiles, scale_to_normal

    cfg = artifact.config
    model = artifact.build_model()
    train = load_training_data(data_uri, cfg).train
    bank = encoder_tokens(model, cfg, train, block).permute(0, 2, 3, 1).reshape(-1, model.cfg.embed_dim)
    bank = bank[torch.randperm(len(bank), generator=torch.Generator().manual_seed(0))[:bank_size]]
    size = cfg.model.image_size
    fakes, fake_masks, raw_fake = validation_maps(artifact, holdout)
    knn = {name: knn_maps(encoder_tokens(model, cfg, images, block), bank, size)
           for name, images in (("test", test.images), ("normal", holdout), ("fake", fakes))}
    mean = {"test": raw_test, "normal": raw_normal, "fake": raw_fake}
    mean = {k: combine(r.recon_error, r.prob, "mean") for k, r in mean.items()}
    q_knn, q_mean = normal_quantiles(knn["normal"]), normal_quantiles(mean["normal"])
    val_labels = np.r_[np.zeros(len(holdout)), np.ones(len(fakes))]
    val_masks = validation_masks(len(holdout), fake_masks)
    print(f"kNN map: encoder block {block + 1}, 3x3-pooled tokens, bank of {len(bank)} training tokens")
    for name, maps in (("knn", knn), ("mean+knn", {k: 0.5 * (scale_to_normal(knn[k], q_knn)
                                                            + scale_to_normal(mean[k], q_mean)) for k in knn})):
        smoothed = {k: gaussian_smooth(v, cfg.anomaly_map.sigma) for k, v in maps.items()}
        val = torch.cat([smoothed["normal"], smoothed["fake"]])
        for rule in ("max", "topk"):
            print(f"{name + ' ' + rule:36s} validation image AUROC "
                  f"{image_auroc(val_labels, image_score(val, rule).numpy()):.3f} pixel AUROC "
                  f"{pixel_auroc(val_masks, val.numpy()):.3f} | test image AUROC "
                  f"{image_auroc(test.labels, image_score(smoothed['test'], rule).numpy()):.3f} pixel AUROC "
                  f"{pixel_auroc(test.masks, smoothed['test'].numpy()):.3f}", flush=True)


def validation_maps(artifact, holdout: np.ndarray):
    """Validation's defects: the held-back normals' unseen-family corruptions, their masks and R, P."""
    fakes, fake_masks = validation_fakes(holdout, artifact.config)
    return fakes, fake_masks, artifact.predictor().raw_maps(fakes)


def score_fusion_study(artifact, test, raw_test, raw_normal, holdout: np.ndarray) -> None:
    """Image scores of P and of R fused after scoring (each in standard deviations of the held-back
    normals' scores, then added or the larger taken) against the model's own rule, on validation
    data and on the test set."""
    am = artifact.config.anomaly_map
    raw = {"normal": raw_normal, "fake": validation_maps(artifact, holdout)[2], "test": raw_test}
    val_labels = np.r_[np.zeros(len(raw_normal.prob)), np.ones(len(raw["fake"].prob))]

    def report(name: str, score) -> None:
        val = np.r_[score("normal"), score("fake")]
        print(f"{name:36s} validation image AUROC {image_auroc(val_labels, val):.3f} | "
              f"test image AUROC {image_auroc(test.labels, score('test')):.3f}", flush=True)

    report(f"model's rule {am.combination}/{am.score_rule}",
           lambda k: make_anomaly_map(raw[k].recon_error, raw[k].prob, am)[1].numpy())
    smooth = {(k, part): gaussian_smooth(m, am.sigma)
              for k, r in raw.items() for part, m in (("P", r.prob), ("R", r.recon_error))}
    for rule in ("max", "topk"):
        alone = {key: image_score(maps, rule).numpy() for key, maps in smooth.items()}
        ref = {part: (alone["normal", part].mean(), alone["normal", part].std() + 1e-12) for part in "PR"}

        def z(k: str, part: str) -> np.ndarray:
            return (alone[k, part] - ref[part][0]) / ref[part][1]

        for part in "PR":
            report(f"{part} alone {rule}", lambda k, part=part: alone[k, part])
        report(f"zP+zR {rule}", lambda k: z(k, "P") + z(k, "R"))
        report(f"max(zP,zR) {rule}", lambda k: np.maximum(z(k, "P"), z(k, "R")))


def shifted_view(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> the same images moved so that view pixel (i, j) shows image pixel
    (i + dy, j + dx); what falls outside is the image mirrored at its border."""
    pad = max(abs(dy), abs(dx))
    if pad == 0:
        return x
    h, w = x.shape[1:3]
    padded = torch.nn.functional.pad(x.permute(0, 3, 1, 2).float(), (pad, pad, pad, pad), mode="reflect")
    return padded[:, :, pad + dy:pad + dy + h, pad + dx:pad + dx + w].round().to(torch.uint8).permute(0, 2, 3, 1)


def shifted_back(maps: torch.Tensor, dy: int, dx: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, H, W) maps of a :func:`shifted_view` -> the maps in the image's coordinates and
    (H, W) where they are known (the mirrored border band of the view is dropped)."""
    h, w = maps.shape[1:]
    out, known = torch.zeros_like(maps), torch.zeros(h, w, dtype=maps.dtype, device=maps.device)
    src = (slice(max(0, -dy), min(h, h - dy)), slice(max(0, -dx), min(w, w - dx)))
    dst = (slice(max(0, dy), min(h, h + dy)), slice(max(0, dx), min(w, w + dx)))
    out[:, dst[0], dst[1]] = maps[:, src[0], src[1]]
    known[dst] = 1.0
    return out, known


class ShiftAveragingPredictor(Predictor):
    """The product's predictor with R and P averaged over shifted copies of each image."""

    def __init__(self, artifact, shifts: list[tuple[int, int]], device: str = "cpu"):
        super().__init__(artifact.build_model(), artifact.config, device)
        self.shifts = shifts

    def _raw(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        recon, prob, known = 0.0, 0.0, 0.0
        for dy, dx in self.shifts:
            r, p = super()._raw(shifted_view(x, dy, dx))
            (r, k), (p, _) = shifted_back(r, dy, dx), shifted_back(p, dy, dx)
            recon, prob, known = recon + r, prob + p, known + k
        return recon / known, prob / known


def shift_study(artifact, test, holdout: np.ndarray, device: str = "cpu") -> None:
    """Test-time shift averaging against one view: rule chosen on validation, test metrics."""
    h = artifact.config.model.patch_size // 2
    for name, shifts in (("1 view", [(0, 0)]), ("4 views, half-patch grid", [(0, 0), (0, h), (h, 0), (h, h)]),
                         ("5 views, half-patch cross", [(0, 0), (-h, 0), (h, 0), (0, -h), (0, h)])):
        predictor = ShiftAveragingPredictor(artifact, shifts, device)
        cfg, cal = calibrate(predictor, holdout, artifact.config)
        rule = f"{cfg.anomaly_map.combination}/{cfg.anomaly_map.score_rule}"
        pred = predictor.predict(test.images, map_cfg=cfg.anomaly_map)
        print(f"shift views: {name:26s} rule {rule:18s} validation image AUROC "
              f"{cal.validation[rule]['image_auroc']:.3f} | test image AUROC "
              f"{image_auroc(test.labels, pred.scores):.3f} pixel AUROC {pixel_auroc(test.masks, pred.maps):.3f} "
              f"AUPRO {aupro(test.masks, pred.maps):.3f}", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="MVTec-AD style dataset the model was trained on")
    p.add_argument("--model", required=True, help="model artifact written by quality.py --save-model")
    p.add_argument("--device", default="cpu")
    p.add_argument("--knn-block", type=int, default=0, metavar="K",
                   help="also try a PatchCore-style kNN map on the tokens after encoder block K (1-based)")
    p.add_argument("--knn-bank", type=int, default=60_000, help="training tokens kept in the kNN bank")
    p.add_argument("--knn-only", action="store_true", help="only the kNN study (needs --knn-block)")
    p.add_argument("--score-fusion", action="store_true",
                   help="also fuse P's and R's image scores in units of the held-back normals' scores")
    p.add_argument("--shift-views", action="store_true",
                   help="also average R and P over copies shifted by half a patch (test-time augmentation)")
    p.add_argument("--studies-only", action="store_true",
                   help="only the studies asked for (--knn-block, --score-fusion, --shift-views), "
                        "not the map-rule tables")
    args = p.parse_args(argv)
    if args.knn_only and not args.knn_block:
        p.error("--knn-only needs --knn-block K")
    if args.studies_only and not (args.knn_block or args.score_fusion or args.shift_views):
        p.error("--studies-only needs a study: --knn-block K, --score-fusion or --shift-views")

    artifact = ModelArtifact.load(args.model)
    size = artifact.config.model.image_size
    test = data.load_images(data.list_test(args.data), size)
    holdout = load_training_data(args.data, artifact.config).holdout
    raw_test = raw_normal = None
    if not args.studies_only or args.knn_block or args.score_fusion:  # the shift study makes its own
        predictor = artifact.predictor(args.device)
        raw_test, raw_normal = predictor.raw_maps(test.images), predictor.raw_maps(holdout)
    labels = test.labels
    print(f"{len(holdout)} held-back normals, {len(labels)} test images")

    def row(name: str, maps: torch.Tensor, rule: str, pixel: bool = True) -> None:
        scores = image_score(maps, rule).numpy()
        text = f"{name:36s} image AUROC {image_auroc(labels, scores):.3f}"
        if pixel:
            text += f"  pixel AUROC {pixel_auroc(test.masks, maps.numpy()):.3f}"
        print(text, flush=True)

    def smoothed(raw, comb: str, sigma: float) -> torch.Tensor:
        return gaussian_smooth(combine(raw.recon_error, raw.prob, comb), sigma)

    if not (args.knn_only or args.studies_only):
        test_maps = {(comb, sigma): smoothed(raw_test, comb, sigma)
                     for comb in ("product", "prob", "recon", "mean") for sigma in SIGMAS}
        band = border_band(size)
        for (comb, sigma), maps in test_maps.items():
            for rule in ("max", "topk", "mean"):
                row(f"{comb} sigma={sigma:g} {rule}", maps, rule, pixel=rule == "max")
            peak = maps.flatten(1).argmax(dim=1).numpy()
            on_band = band.ravel()[peak]
            in_mask = test.masks.reshape(len(labels), -1)[np.arange(len(labels)), peak][labels == 1]
            print(f"{'':36s} peak on the border band: normals {on_band[labels == 0].mean():.2f}, "
                  f"defects {on_band[labels == 1].mean():.2f}; defect images whose peak lies in the "
                  f"defect: {in_mask.mean():.2f}")
        print(f"defect pixels on the border band: {test.masks[:, band].sum() / max(test.masks.sum(), 1):.2f}")

        for comb in ("prob", "recon", "mean"):
            for sigma in SIGMAS:
                normal, maps = smoothed(raw_normal, comb, sigma), test_maps[comb, sigma]
                mean, std = normal.mean(dim=0), normal.std(dim=0)
                z = (maps - mean) / (std + 1e-6 * std.mean())
                for rule in ("max", "topk"):
                    row(f"z[{comb}] sigma={sigma:g} {rule}", z, rule)
                row(f"minus-mean[{comb}] sigma={sigma:g} topk", maps - mean, "topk")
                inner = maps.clone()
                inner[:, torch.from_numpy(band)] = maps.min()
                row(f"no-border[{comb}] sigma={sigma:g} topk", inner, "topk", pixel=False)
    if args.knn_block:
        knn_study(artifact, args.data, test, raw_test, raw_normal, holdout, args.knn_block - 1, args.knn_bank)
    if args.score_fusion:
        score_fusion_study(artifact, test, raw_test, raw_normal, holdout)
    if args.shift_views:
        shift_study(artifact, test, holdout, args.device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
