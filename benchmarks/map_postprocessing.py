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
from somewhere a normal image could score too).
These are exploratory test-set numbers, for choosing what to build next, never for
choosing the product's rule (that is chosen on validation data).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from raymae import data
from raymae.anomaly_map import combine, gaussian_smooth, image_score
from raymae.artifact import ModelArtifact
from raymae.metrics import image_auroc, pixel_auroc
from raymae.training.local import load_training_data

SIGMAS = (2.0, 4.0)


def border_band(size: int) -> np.ndarray:
    """(size, size) bool, True on the outer 1/16 of the image on every side."""
    b = size // 16
    band = np.zeros((size, size), bool)
    band[:b] = band[-b:] = True
    band[:, :b] = band[:, -b:] = True
    return band


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="MVTec-AD style dataset the model was trained on")
    p.add_argument("--model", required=True, help="model artifact written by quality.py --save-model")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)

    artifact = ModelArtifact.load(args.model)
    size = artifact.config.model.image_size
    test = data.load_images(data.list_test(args.data), size)
    holdout = load_training_data(args.data, artifact.config).holdout
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
