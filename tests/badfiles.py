"""Small files that are broken in the ways real image dumps are broken."""

from __future__ import annotations

import io
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def png_bytes(seed: int = 0, size: int = 48) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(seed: int = 0, size: int = 48) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A PNG whose header declares width x height pixels (10 G by default) and holds none."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


# name -> (bytes, the reason scoring must give)
BAD_FILES: dict[str, tuple[bytes, str]] = {
    "zero-bytes.png": (b"", "empty file"),
    "truncated.jpg": (jpeg_bytes(1, 64)[:400], "not a readable image"),
    "truncated.png": (png_bytes(2, 64)[:1500], "not a readable image"),
    "not-an-image.png": (b"<html>404 Not Found</html>", "not a readable image"),
    "bomb.png": (png_bomb(), "decompression bomb"),
}


def write_bad_files(folder: Path) -> dict[str, str]:
    """Write BAD_FILES into ``folder``; returns file path -> expected reason fragment."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, (data, reason) in BAD_FILES.items():
        (folder / name).write_bytes(data)
        out[str(folder / name)] = reason
    return out


def write_tar(path: Path, members: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path
