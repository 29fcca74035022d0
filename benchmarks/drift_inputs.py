"""How far each ``intensity`` setting's model input moves under the lighting-drift rows.

A global brightness change is undone exactly by every per-image normalisation, unless the
camera clips: a brighter lamp cannot brighten a pixel that already reads 255, so the change
is then no longer a pure gain. This prints, for the normal test images of a dataset, the
share of saturated pixels and the mean absolute change of the model input (in units of the
normalised input) for each ``intensity`` under the quality benchmark's drift gains. No model
is trained; it takes seconds::

    python benchmarks/drift_inputs.py --data ../shared/data/mvtec_bottle --size 128
"""

from __future__ import annotations

import argparse
import sys
import typing
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality import DRIFTS  # noqa: E402

from raymae import data  # noqa: E402
from raymae.config import IMAGENET_MEAN, IMAGENET_STD, Intensity  # noqa: E402
from raymae.corruption import exposure_change  # noqa: E402
from raymae.inference import to_model_input  # noqa: E402


def saturated_share(images: np.ndarray) -> float:
    """Share of the pixels of ``(N, H, W, 3) uint8`` images that read 255 in every channel."""
    return float((images == 255).all(axis=-1).mean())


def input_change(images: np.ndarray, gain: float, intensity: Intensity) -> float:
    """Mean absolute change of the model input when ``images`` are lit ``gain`` times as bright."""
    before = to_model_input(images, IMAGENET_MEAN, IMAGENET_STD, intensity=intensity)
    after = to_model_input(exposure_change(images, gain), IMAGENET_MEAN, IMAGENET_STD, intensity=intensity)
    return float((after - before).abs().mean())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="an MVTec-layout dataset")
    p.add_argument("--size", type=int, default=128, help="image side the model sees (the cpu recipe: 128)")
    args = p.parse_args(argv)

    normal = [r for r in data.list_test(args.data) if r.label == 0]
    if not normal:
        p.error(f"{args.data} has no normal test images")
    images = data.load_images(normal, args.size).images
    print(f"{len(images)} normal test images at {args.size} px; saturated pixels {saturated_share(images):.3f}")
    for name, gain in DRIFTS.items():
        print(f"{name} (x{gain}): saturated {saturated_share(exposure_change(images, gain)):.3f}; input change "
              + ", ".join(f"{i} {input_change(images, gain, i):.3f}" for i in typing.get_args(Intensity)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
