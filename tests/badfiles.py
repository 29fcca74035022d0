"""Small files that are broken in the ways real image dumps are broken."""

from __future__ import annotations

import io
import struct
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

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


# ====================================================================== the corpus
# Awkward inputs as real dumps have them, each kind with the outcome scoring must
# give. `write_corpus` lays them out under one folder; tests read it through the
# same functions the pipeline runs (and through one real `raymae score`).
OK, ERROR = "ok", "error"
RED, GREEN, BLUE = (220, 30, 30), (30, 200, 40), (30, 40, 220)

# Limits the corpus is scored with (passed as --max-file-bytes / --max-tar-members):
CORPUS_MAX_FILE_BYTES = 2_000_000
CORPUS_MAX_TAR_MEMBERS = 12


@dataclass(frozen=True)
class Expect:
    """One output row: 'ok' with the original (width, height) and a check of the model-size
    RGB pixels, or 'error' with a fragment of the reason a person reads."""

    outcome: str
    size: tuple[int, int] | None = None
    check: Callable[[np.ndarray], bool] | None = None
    reason: str = ""


@dataclass
class Kind:
    """A kind of awkward input: the files it adds (relative path -> bytes, or a symlink
    target for a `Link`), the rows it must give (relative image_uri -> Expect), and the
    files that must be reported as skipped (neither image nor tar)."""

    name: str
    files: dict[str, bytes]
    rows: dict[str, Expect]
    skipped: tuple[str, ...] = ()


def ok(size: tuple[int, int], check: Callable[[np.ndarray], bool] | None = None) -> Expect:
    return Expect(OK, size, check)


def error(reason: str) -> Expect:
    return Expect(ERROR, reason=reason)


# ------------------------------------------------------------------ pixel helpers
def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def solid(colour: tuple[int, int, int], size: tuple[int, int] = (40, 30), mode: str = "RGB") -> Image.Image:
    return Image.new("RGB", size, colour).convert(mode)


def mostly(colour: tuple[int, int, int], tol: int = 40) -> Callable[[np.ndarray], bool]:
    """Every pixel within `tol` of `colour` (JPEG and palette rounding allowed)."""
    return lambda px: bool(np.abs(px.astype(int) - colour).max() <= tol)


def grey(level: int, tol: int = 3) -> Callable[[np.ndarray], bool]:
    return mostly((level, level, level), tol)


def top_red_bottom_blue(px: np.ndarray) -> bool:
    """The upright picture of `rotated_jpeg`: red over blue (it is stored sideways)."""
    h = px.shape[0]
    top, bottom = px[: h // 3].reshape(-1, 3).mean(0), px[-h // 3:].reshape(-1, 3).mean(0)
    return bool(top[0] > 150 > top[2] and bottom[2] > 150 > bottom[0])


def rotated_jpeg() -> bytes:
    """Stored 60 wide x 30 high, left red / right blue, with EXIF orientation 6
    (turn 90 degrees clockwise to view): upright it is 30 x 60, red over blue."""
    img = Image.new("RGB", (60, 30), BLUE)
    img.paste(RED, (0, 0, 30, 30))
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(img, "JPEG", quality=95, exif=exif)


def png_rgb16(width: int, height: int, value: int) -> bytes:
    """A 48-bit (16 bits per channel) RGB PNG, written by hand: Pillow cannot write one."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\0" + struct.pack(">H", value) * 3 * width
    ihdr = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(row * height))
            + chunk(b"IEND", b""))


def real_png_bomb(side: int = 20_000) -> bytes:
    """A valid side x side 8-bit grey PNG of zeros (400 M pixels, ~400 KB compressed)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    comp = zlib.compressobj(9)
    row = b"\0" * (side + 1)
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def frames(fmt: str) -> bytes:
    """A 3-frame animated GIF or multi-page TIFF whose first frame is red."""
    first, *rest = [solid(c) for c in (RED, GREEN, BLUE)]
    kw = {"duration": 100, "loop": 0} if fmt == "GIF" else {}
    return encode(first, fmt, save_all=True, append_images=rest, **kw)


def tar_bytes(members: list[tarfile.TarInfo | tuple[str, bytes]], gz: bool = False) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w") as tar:
        for m in members:
            if isinstance(m, tarfile.TarInfo):
                tar.addfile(m)
            else:
                info = tarfile.TarInfo(m[0])
                info.size = len(m[1])
                tar.addfile(info, io.BytesIO(m[1]))
    return buf.getvalue()


def link_member(name: str, target: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def noise_png(seed: int, size: tuple[int, int] = (32, 32)) -> bytes:
    rng = np.random.default_rng(seed)
    return encode(Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)), "PNG")


# ------------------------------------------------------------------ the kinds
def corpus_kinds() -> list[Kind]:
    jpeg = encode(solid(GREEN), "JPEG", quality=95)
    png = encode(solid(BLUE), "PNG")
    truncated_tar = tar_bytes([("a.png", noise_png(1)), ("b.png", noise_png(2))])
    cut = truncated_tar.index(noise_png(2)) + 50
    many = [(f"m/{i:03d}.png", noise_png(100 + i, (8, 8))) for i in range(CORPUS_MAX_TAR_MEMBERS + 3)]
    big = encode(Image.fromarray(np.random.default_rng(7).integers(0, 255, (900, 900, 3), np.uint8)), "BMP")
    html = (b"<!DOCTYPE html><html><head><title>503 Service Unavailable</title></head>"
            b"<body><h1>Service Unavailable</h1></body></html>")
    crc = bytearray(noise_png(3))
    at = crc.index(b"IDAT") + 20
    crc[at:at + 16] = b"\xff" * 16  # inside the compressed pixels
    K = Kind
    return [
        # ---------------------------------------------------------- broken or not images
        K("zero bytes", {"broken/zero.png": b""}, {"broken/zero.png": error("empty file (0 bytes)")}),
        K("truncated JPEG", {"broken/truncated.jpg": jpeg_bytes(1, 64)[:400]},
          {"broken/truncated.jpg": error("not a readable image")}),
        K("truncated PNG", {"broken/truncated.png": png_bytes(2, 64)[:1500]},
          {"broken/truncated.png": error("not a readable image")}),
        K("PNG signature only", {"broken/signature.png": b"\x89PNG\r\n\x1a\n"},
          {"broken/signature.png": error("not a readable image")}),
        K("PNG with a corrupted data chunk", {"broken/bad-crc.png": bytes(crc)},
          {"broken/bad-crc.png": error("not a readable image")}),
        K("text named .png", {"broken/notes.png": b"camera 3 offline, see ticket 1234\n"},
          {"broken/notes.png": error("unknown or unsupported image format")}),
        K("HTML error page saved as .jpg", {"broken/error-page.jpg": html},
          {"broken/error-page.jpg": error("unknown or unsupported image format")}),
        K("20000x20000 decompression bomb", {"broken/bomb.png": real_png_bomb()},
          {"broken/bomb.png": error("decompression bomb")}),
        K("file over the byte limit", {"broken/huge.bmp": big},
          {"broken/huge.bmp": error("file too large")}),
        # ---------------------------------------------------------- odd but valid images
        K("1x1 image", {"odd/one-pixel.png": encode(solid(RED, (1, 1)), "PNG")},
          {"odd/one-pixel.png": ok((1, 1), mostly(RED, 0))}),
        K("4000x1 strip", {"odd/strip.png": encode(solid(GREEN, (4000, 1)), "PNG")},
          {"odd/strip.png": ok((4000, 1), mostly(GREEN, 0))}),
        K("CMYK JPEG", {"odd/cmyk.jpg": encode(Image.new("CMYK", (40, 30), (0, 255, 255, 0)), "JPEG", quality=95)},
          {"odd/cmyk.jpg": ok((40, 30), mostly((255, 0, 0), 40))}),
        K("16-bit grey PNG", {"odd/grey16.png": encode(Image.fromarray(np.full((30, 40), 32896, np.uint16)), "PNG")},
          {"odd/grey16.png": ok((40, 30), grey(128))}),
        K("16-bit RGB PNG", {"odd/rgb16.png": png_rgb16(40, 30, 0xC0C0)}, {"odd/rgb16.png": ok((40, 30), grey(192))}),
        K("RGBA PNG", {"odd/rgba.png": encode(solid(BLUE, mode="RGBA"), "PNG")}, {"odd/rgba.png": ok((40, 30), mostly(BLUE, 0))}),
        K("grey + alpha PNG", {"odd/la.png": encode(Image.new("LA", (40, 30), (90, 128)), "PNG")},
          {"odd/la.png": ok((40, 30), grey(90, 0))}),
        K("palette PNG", {"odd/palette.png": encode(solid(GREEN).convert("P", palette=Image.Palette.ADAPTIVE), "PNG")},
          {"odd/palette.png": ok((40, 30), mostly(GREEN, 0))}),
        K("grayscale JPEG", {"odd/grey.jpg": encode(Image.new("L", (40, 30), 77), "JPEG", quality=95)},
          {"odd/grey.jpg": ok((40, 30), grey(77))}),
        K("EXIF-rotated JPEG", {"odd/rotated.jpg": rotated_jpeg()}, {"odd/rotated.jpg": ok((30, 60), top_red_bottom_blue)}),
        K("progressive JPEG", {"odd/progressive.jpg": encode(solid(RED), "JPEG", quality=95, progressive=True)},
          {"odd/progressive.jpg": ok((40, 30), mostly(RED))}),
        K("JPEG with bytes after its end", {"odd/trailing.jpg": jpeg + b"\0garbage" * 20},
          {"odd/trailing.jpg": ok((40, 30), mostly(GREEN))}),
        K("animated GIF (first frame)", {"odd/animated.gif": frames("GIF")},
          {"odd/animated.gif": ok((40, 30), mostly(RED, 0))}),
        K("multi-page TIFF (first page)", {"odd/pages.tif": frames("TIFF")},
          {"odd/pages.tif": ok((40, 30), mostly(RED, 0))}),
        K("float TIFF", {"odd/float.tif": encode(Image.fromarray(np.full((30, 40), 0.5, np.float32)), "TIFF")},
          {"odd/float.tif": ok((40, 30))}),
        K("BMP and WebP", {"odd/plain.bmp": encode(solid(RED), "BMP"), "odd/plain.webp": encode(solid(BLUE), "WEBP", lossless=True)},
          {"odd/plain.bmp": ok((40, 30), mostly(RED, 0)), "odd/plain.webp": ok((40, 30), mostly(BLUE, 0))}),
        K("extension lies about the format", {"odd/png-named.jpg": png, "odd/jpeg-named.png": jpeg},
          {"odd/png-named.jpg": ok((40, 30), mostly(BLUE, 0)), "odd/jpeg-named.png": ok((40, 30), mostly(GREEN))}),
        K("upper-case extensions", {"odd/SHOUT.PNG": png, "odd/SHOUT.JPEG": jpeg},
          {"odd/SHOUT.PNG": ok((40, 30)), "odd/SHOUT.JPEG": ok((40, 30))}),
        # ---------------------------------------------------------- names and folders
        K("nested folders", {"a/b/c/d/e/deep.png": png}, {"a/b/c/d/e/deep.png": ok((40, 30))}),
        K("unicode and spaces in names", {"línea ü/画像 01.png": png, "with space/img 1.jpg": jpeg},
          {"línea ü/画像 01.png": ok((40, 30)), "with space/img 1.jpg": ok((40, 30))}),
        K("# and % in names", {"odd/cam#2 100%.png": png}, {"odd/cam#2 100%.png": ok((40, 30))}),
        K("duplicate names in different folders", {"cam1/frame.png": noise_png(11), "cam2/frame.png": noise_png(12)},
          {"cam1/frame.png": ok((32, 32)), "cam2/frame.png": ok((32, 32))}),
        K("files that are not images, and hidden files", {"odd/readme.txt": b"hello", "odd/.DS_Store": b"\0\0",
                                                          "odd/._frame.png": b"\0\5\26\7", "_SUCCESS": b""},
          {}, skipped=("odd/readme.txt",)),
        # ---------------------------------------------------------- tar shards
        K("tar with non-image members", {"tars/webdataset.tar": tar_bytes(
            [("000.png", noise_png(20)), ("000.json", b"{}"), ("000.cls", b"1")])},
          {"tars/webdataset.tar#000.png": ok((32, 32))}),
        K("tar with ../ member names (never extracted)", {"tars/escape.tar": tar_bytes(
            [("../../escaped.png", png), ("./dot/inner.png", png)])},
          {"tars/escape.tar#../../escaped.png": ok((40, 30)), "tars/escape.tar#./dot/inner.png": ok((40, 30))}),
        K("tar with absolute member names", {"tars/absolute.tar": tar_bytes([("/etc/raymae-abs.png", png)])},
          {"tars/absolute.tar#/etc/raymae-abs.png": ok((40, 30))}),
        K("tar with link members", {"tars/links.tar": tar_bytes(
            [("real.png", png), link_member("sym.png", "/etc/passwd", tarfile.SYMTYPE),
             link_member("hard.png", "real.png", tarfile.LNKTYPE)])},
          {"tars/links.tar#real.png": ok((40, 30)), "tars/links.tar#sym.png": error("symbolic link"),
           "tars/links.tar#hard.png": error("hard link")}),
        K("tar with a broken image member", {"tars/broken-member.tar": tar_bytes([("zero.png", b""), ("ok.png", png)])},
          {"tars/broken-member.tar#zero.png": error("empty file"), "tars/broken-member.tar#ok.png": ok((40, 30))}),
        K("truncated tar", {"tars/truncated.tar": truncated_tar[:cut]},
          {"tars/truncated.tar#a.png": ok((32, 32)),
           "tars/truncated.tar#b.png": error("unreadable tar member")}),
        K("gzip-compressed tar", {"tars/shard.tar.gz": tar_bytes([("gz.png", png)], gz=True)},
          {"tars/shard.tar.gz#gz.png": ok((40, 30))}),
        K("corrupt gzip tar", {"tars/corrupt.tgz": b"\x1f\x8b\x08\x00" + b"\xff" * 300},
          {"tars/corrupt.tgz": error("unreadable tar archive")}),
        K("not a tar at all", {"tars/fake.tar": b"this is not a tar archive" * 40},
          {"tars/fake.tar": error("unreadable tar archive")}),
        K("tar over the member limit", {"tars/many.tar": tar_bytes(many)},
          {**{f"tars/many.tar#{n}": ok((8, 8)) for n, _ in many[:CORPUS_MAX_TAR_MEMBERS]},
           "tars/many.tar": error("more than 12 members")}),
        K("tar member over the byte limit", {"tars/big-member.tar": tar_bytes([("huge.bmp", big), ("small.png", png)])},
          {"tars/big-member.tar#huge.bmp": error("tar member too large"),
           "tars/big-member.tar#small.png": ok((40, 30))}),
    ]


@dataclass
class Corpus:
    root: Path
    kinds: list[Kind]

    def uri(self, rel: str) -> str:
        """The image_uri of a relative name (``archive.tar#member`` keeps its member name as is)."""
        return f"{self.root}/{rel}"

    def expected_rows(self) -> dict[str, tuple[str, Expect]]:
        """image_uri -> (kind name, expectation), over every kind."""
        return {self.uri(rel): (k.name, e) for k in self.kinds for rel, e in k.rows.items()}

    def expected_skipped(self) -> list[str]:
        return sorted(self.uri(rel) for k in self.kinds for rel in k.skipped)


def write_corpus(root: Path) -> Corpus:
    kinds = corpus_kinds()
    for kind in kinds:
        for rel, data in kind.files.items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    return Corpus(root, kinds)
