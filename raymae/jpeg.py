"""JPEG decoding where the model runs: ``torchvision.io.decode_jpeg`` (nvJPEG on CUDA).

An option of nightly scoring (``raymae score --jpeg-on-device``) for when the CPUs
cannot decode as fast as the GPU scores. Every file's header is still read by
Pillow first, so the size limit, the original height and width and the reasons
for refusing a file are those of :func:`raymae.data.load_image`. Files that are not
baseline RGB/grayscale JPEGs, carry an EXIF rotation, or fail on the device go
through :func:`raymae.data.load_image` instead, so every file gets a row.

The pixels are not bit-identical to Pillow's: Pillow decodes a large JPEG at a
reduced DCT scale and resizes with its own bilinear filter; here the full image is
decoded and resized with an antialiased bilinear interpolation. The difference
is about one grey level on average (``tests/test_jpeg.py`` bounds it).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from raymae.data import MAX_PIXELS, DataError, _open, _orientation, load_image

JPEG_MAGIC = b"\xff\xd8\xff"


def resize_on_device(images: list[torch.Tensor], size: int) -> torch.Tensor:
    """(3, H, W) uint8 images of any sizes -> (N, size, size, 3) uint8, antialiased bilinear."""
    out = []
    for img in images:
        x = img.unsqueeze(0).float()
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out.append(x.round_().clamp_(0, 255).to(torch.uint8))
    return torch.cat(out).permute(0, 2, 3, 1).contiguous()


def decode_on_device(batch, image_size: int, device: str | torch.device,
                     max_pixels: int = MAX_PIXELS) -> dict:
    """Raw bytes -> as :func:`raymae.scoring.decode_images`, but ``image`` is a uint8 tensor on ``device``."""
    from torchvision.io import ImageReadMode, decode_jpeg

    from raymae.scoring import _pylist

    device = torch.device(device)
    uris = _pylist(batch, "image_uri")
    n, s = len(uris), image_size
    height = np.full(n, -1, np.int32)
    width = np.full(n, -1, np.int32)
    errors = _pylist(batch, "error")
    datas = _pylist(batch, "data")
    pixels = torch.zeros((n, s, s, 3), dtype=torch.uint8, device=device)
    on_device, elsewhere = [], []
    for i, data in enumerate(datas):
        if errors[i] is not None:
            continue
        if not data or not data.startswith(JPEG_MAGIC):
            elsewhere.append(i)
            continue
        try:
            img = _open(data, max_pixels)  # the header only: the size limit and the original size
        except DataError as e:
            errors[i] = str(e)
            continue
        if img.mode not in ("L", "RGB") or _orientation(img) not in (None, 1):
            elsewhere.append(i)
            continue
        width[i], height[i] = img.size
        on_device.append(i)
    if on_device:
        encoded = [torch.frombuffer(bytearray(datas[i]), dtype=torch.uint8) for i in on_device]
        try:
            decoded = decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)
        except RuntimeError:  # one bad file fails the whole batch: find it through the CPU path
            elsewhere += on_device
            on_device = []
        else:
            pixels[on_device] = resize_on_device(decoded, s)
    for i in sorted(elsewhere):
        try:
            img = load_image(datas[i], s, max_pixels)
        except Exception as e:  # as decode_images: one image's error, not the run's
            errors[i] = str(e) if isinstance(e, DataError) else f"not a readable image: {type(e).__name__}: {e}"
            height[i] = width[i] = -1
            continue
        pixels[i] = torch.from_numpy(img.pixels).to(device)
        height[i], width[i] = img.height, img.width
    return {"image_uri": np.array(uris, dtype=object),
            "source_uri": np.array(_pylist(batch, "source_uri"), dtype=object),
            "image": pixels, "height": height, "width": width,
            "error": np.array([e or "" for e in errors], dtype=object)}
