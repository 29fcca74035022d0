"""Reading images and datasets from a local folder or ``s3://``.

Training images (``list_train``), either of

* a folder or prefix of normal images, read recursively (dot- and ``_`` files
  skipped), or a glob (``*``, ``?``, ``[``) matching them;
* an MVTec-AD style root: a folder with a ``train/`` (or ``ground_truth/``)
  subfolder is read as this layout, and its normal images are ``train/good``.

Test images, either an MVTec-AD style root (``list_test``)::

    <root>/test/good/*.png                       normal test images
    <root>/test/<defect>/*.png                   defective test images
    <root>/ground_truth/<defect>/<stem>_mask.png pixel masks (0 / >0), optional

or folders (``list_folders``, as anomalib's ``Folder`` data): folders or globs of
normal images, of defective images (each folder a defect type, named after it),
and optionally of masks, paired with the defective images by name
(``<stem>.png`` or ``<stem>_mask.png``).

Images are decoded with Pillow; grayscale, palette, 16-bit, CMYK and RGBA become
RGB, an EXIF orientation is applied (the image is scored upright, as a viewer
shows it), multi-frame files (animated GIF, multi-page TIFF) give their first
frame, and every image is resized to the model's square input size.
"""

from __future__ import annotations

import io
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from raymae import storage

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")
GOOD = "good"


class DataError(ValueError):
    """A dataset that cannot be read, explained for a person."""


# ------------------------------------------------------------------ decoding
# Images with more pixels than this are refused as possible decompression bombs
# (Pillow's own warning limit; Pillow refuses outright at twice this).
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485


@dataclass
class DecodedImage:
    """pixels: (size, size, 3) uint8, resized for the model; height/width: the original size."""

    pixels: np.ndarray
    height: int
    width: int


def load_image(data: bytes, size: int, max_pixels: int = MAX_PIXELS) -> DecodedImage:
    """Image bytes -> RGB pixels at the model's square size, the one decoder everything uses.

    Training, evaluation, calibration and nightly scoring all decode through
    here, so one file gives the same pixels (and the same score) everywhere.
    Raises :class:`DataError` with the reason for an empty, truncated or
    unreadable file and for one larger than ``max_pixels``. (Truncated files
    fail because Pillow's ``ImageFile.LOAD_TRUNCATED_IMAGES`` is off, its
    default; raymae never turns it on, so nothing is silently padded.)
    ``height`` and ``width`` are the upright size, after the EXIF orientation.
    """
    img, (width, height) = _decode(data, max_pixels, draft_size=size)
    return DecodedImage(resize_rgb(img, size), height, width)


def decode_image(data: bytes, max_pixels: int = MAX_PIXELS, draft_size: int | None = None) -> Image.Image:
    """Bytes -> RGB PIL image at its own aspect ratio; raises DataError with the reason when it cannot.

    Full size, except that with ``draft_size`` a large JPEG may be decoded at 1/2, 1/4 or 1/8
    (never below ``draft_size`` on either side).
    """
    return _decode(data, max_pixels, draft_size)[0]


def _decode(data: bytes, max_pixels: int, draft_size: int | None = None) -> tuple[Image.Image, tuple[int, int]]:
    """(upright RGB image, original upright (width, height)); with ``draft_size`` a large
    JPEG is decoded at 1/2, 1/4 or 1/8."""
    img = _open(data, max_pixels)
    width, height = img.size
    if draft_size:
        img.draft(None, (draft_size, draft_size))
    try:
        img.load()  # before the EXIF: a PNG's may follow its pixels, and a failed load must fail here
    except Exception as e:  # truncated data, broken streams: Pillow raises many types
        raise DataError(f"not a readable image: {e}") from e
    orientation = _orientation(img)
    if orientation not in (None, 1):
        img = ImageOps.exif_transpose(img)
        if orientation in _SWAPS_AXES:
            width, height = height, width
    return to_rgb(img), (width, height)


_SWAPS_AXES = (5, 6, 7, 8)  # EXIF orientations that turn the image by 90 degrees


def _orientation(img: Image.Image) -> int | None:
    """The EXIF orientation tag (1-8) of a loaded image, or None when there is none or it cannot be read."""
    try:
        value = img.getexif().get(0x0112)
    except Exception:  # a broken EXIF block is no reason to refuse the pixels
        return None
    return value if isinstance(value, int) and 1 <= value <= 8 else None


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """Read the header only and check the pixel count before anything is decoded."""
    if not data:
        raise DataError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise DataError(f"image too large, refused as a possible decompression bomb: {e}") from e
    except UnidentifiedImageError as e:  # its message names a BytesIO object: say it plainly
        raise DataError("not a readable image: unknown or unsupported image format") from e
    except Exception as e:
        raise DataError(f"not a readable image: {e}") from e
    width, height = img.size
    if width * height > max_pixels:
        raise DataError(f"image too large, refused as a possible decompression bomb: "
                        f"{width}x{height} = {width * height} pixels, limit {max_pixels}")
    return img


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB (16-bit and float images rescaled, alpha dropped)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        img = Image.fromarray(np.clip(arr / hi * 255.0, 0, 255).astype(np.uint8))
    return img.convert("RGB")


def resize_rgb(img: Image.Image, size: int) -> np.ndarray:
    """RGB image -> (size, size, 3) uint8, bilinear."""
    return np.asarray(img.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)


def decode_mask(data: bytes, size: int) -> np.ndarray:
    """Mask bytes -> (size, size) bool, nearest-neighbour resize, foreground = value > 127."""
    img = Image.open(io.BytesIO(data)).convert("L").resize((size, size), Image.Resampling.NEAREST)
    return np.asarray(img) > 127


# ------------------------------------------------------------------ listing
@dataclass
class ImageRecord:
    """One image of a dataset split (no pixels yet)."""

    uri: str
    label: int                 # 0 normal, 1 anomalous
    defect_type: str           # "good" or the defect folder name
    mask_uri: str | None = None


@dataclass
class ImageSet:
    """Decoded images of a split, aligned with their records.

    images: (N, S, S, 3) uint8; masks: (N, S, S) bool (all False for normal images).
    """

    records: list[ImageRecord]
    images: np.ndarray
    masks: np.ndarray = field(default=None)

    @property
    def labels(self) -> np.ndarray:
        return np.array([r.label for r in self.records], dtype=np.int64)

    @property
    def defect_types(self) -> list[str]:
        return [r.defect_type for r in self.records]

    @property
    def uris(self) -> list[str]:
        return [r.uri for r in self.records]


def _list_images(fs, path: str) -> list[str]:
    """The images directly in one folder of an MVTec-AD layout, sorted."""
    if not fs.isdir(path):
        return []
    files = [p for p in fs.ls(path, detail=False) if p.lower().endswith(IMAGE_EXTENSIONS)]
    return sorted(files)


def _uri(root_uri: str, root_path: str, path: str) -> str:
    """Turn a filesystem path back into a URI of the same kind as the root."""
    return storage.join(root_uri, path[len(root_path):]) if path.startswith(root_path) else path


def _open_root(uri: str, expected: str):
    fs, root = storage.resolve(uri)
    try:
        exists = fs.isdir(root)
    except Exception as e:  # e.g. unreachable endpoint, missing bucket
        raise DataError(f"cannot reach {uri!r}: {e}") from e
    if not exists:
        raise DataError(f"data folder not found: {uri!r} (expected {expected})")
    return fs, root.rstrip("/")


def find_images(uri: str, expected: str = "a folder of images") -> list[str]:
    """Every image in a folder or prefix (recursively) or matched by a glob, as URIs, sorted.

    Dot-files, ``_`` files and what is inside such folders are skipped, as in scoring.
    Returns [] for an empty folder or a glob that matches nothing; a missing folder is a
    DataError that says what was ``expected`` there.
    """
    if storage.is_glob(uri):
        fs, path = storage.resolve(uri)
        try:
            infos = fs.glob(path, detail=True)
        except (FileNotFoundError, PermissionError, OSError) as e:
            raise DataError(f"cannot list {uri!r}: {e}") from e
        root = storage.fixed_prefix(path)
        return sorted(storage.found_uri(uri, p) for p, info in infos.items()
                      if info.get("type", "file") == "file" and p.lower().endswith(IMAGE_EXTENSIONS)
                      and not storage.hidden(p[len(root):]))
    fs, root = _open_root(uri, expected)
    try:
        files = fs.find(root)
    except (FileNotFoundError, PermissionError, OSError) as e:
        raise DataError(f"cannot list {uri!r}: {e}") from e
    return sorted(_uri(uri, root, f) for f in files
                  if f.lower().endswith(IMAGE_EXTENSIONS) and not storage.hidden(f[len(root):]))


# Subfolders that make a folder an MVTec-AD root rather than a folder of normal images
# (so an MVTec root without train/good is an error, never its defects read as normal).
MVTEC_MARKERS = ("train", "ground_truth")


def is_mvtec_root(uri: str) -> bool:
    """A folder with ``train/`` or ``ground_truth/``; False for a glob or a plain folder."""
    if storage.is_glob(uri):
        return False
    fs, root = _open_root(uri, "a folder of normal images, or an MVTec-AD layout with train/good")
    return any(fs.isdir(f"{root}/{marker}") for marker in MVTEC_MARKERS)


def list_train(uri: str) -> list[ImageRecord]:
    """Normal training images, sorted: ``<uri>/train/good`` of an MVTec-AD root, else every
    image in the folder (recursively) or matched by the glob."""
    extensions = ", ".join(IMAGE_EXTENSIONS)
    if is_mvtec_root(uri):
        fs, root = _open_root(uri, "an MVTec-AD layout with train/good")
        files = _list_images(fs, f"{root}/train/good")
        if not files:
            raise DataError(f"no training images in {storage.join(uri, 'train/good')!r}: "
                            f"put normal images ({extensions}) there")
        return [ImageRecord(_uri(uri, root, f), 0, GOOD) for f in files]
    files = find_images(uri, "a folder of normal images, or an MVTec-AD layout with train/good")
    if not files:
        where = "match" if storage.is_glob(uri) else "in"
        raise DataError(f"no training images {where} {uri!r}: give a folder, prefix or glob of "
                        f"normal images ({extensions})")
    return [ImageRecord(f, 0, GOOD) for f in files]


def list_test(uri: str) -> list[ImageRecord]:
    """Test images with their defect type and mask, masks paired by name (else by sorted order)."""
    fs, root = _open_root(uri, "an MVTec-AD layout with test/good and test/<defect>")
    test_dir = f"{root}/test"
    if not fs.isdir(test_dir):
        raise DataError(f"no test folder in {uri!r}: expected test/good and test/<defect>")
    records: list[ImageRecord] = []
    for type_dir in sorted(fs.ls(test_dir, detail=False)):
        defect = type_dir.rstrip("/").rsplit("/", 1)[-1]
        files = _list_images(fs, type_dir)
        if defect == GOOD:
            records += [ImageRecord(_uri(uri, root, f), 0, GOOD) for f in files]
            continue
        masks = _pair_masks(fs, f"{root}/ground_truth/{defect}", files, defect)
        records += [ImageRecord(_uri(uri, root, f), 1, defect, m and _uri(uri, root, m))
                    for f, m in zip(files, masks)]
    if not records:
        raise DataError(f"no test images under {storage.join(uri, 'test')!r}")
    return records


def _stem(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1].rsplit(".", 1)[0]


def _mask_stem(path: str) -> str:
    """The image stem a mask belongs to: ``007_mask.png`` and ``007.png`` both give ``007``."""
    return _stem(path).removesuffix("_mask")


def _pair_masks(fs, gt_dir: str, files: list[str], defect: str) -> list[str | None]:
    masks = _list_images(fs, gt_dir)
    by_stem = {_mask_stem(m): m for m in masks}
    stems = [_stem(f) for f in files]
    if all(s in by_stem for s in stems):
        return [by_stem[s] for s in stems]
    if len(masks) == len(files):
        return masks  # sorted order, as MVTec's own naming guarantees
    if not masks:
        return [None] * len(files)  # image-level labels only
    raise DataError(f"cannot pair {len(files)} images of test/{defect} with {len(masks)} masks "
                    f"in ground_truth/{defect}: name masks <image stem>_mask.png")


def _examples(items: list[str], n: int = 3) -> str:
    shown = ", ".join(repr(i) for i in items[:n])
    return shown + (f" and {len(items) - n} more" if len(items) > n else "")


def _folder_name(uri: str) -> str:
    """What a folder of defective images is called in the metrics: its last path part."""
    _, path = storage.resolve(uri)
    name = storage.fixed_prefix(path).rstrip("/").rsplit("/", 1)[-1] or "defect"
    return "defect" if name == GOOD else name


def list_folders(normal: list[str], abnormal: list[str], masks: list[str] | None = None) -> list[ImageRecord]:
    """Test images from plain folders, prefixes or globs (anomalib's ``Folder`` data).

    ``normal``: folders of normal images; ``abnormal``: folders of defective images,
    each a defect type named after its folder; ``masks``: optional, one folder of
    masks for all defective images or one per ``abnormal`` folder (in the same
    order), paired with the defective images by name (``<stem>.png`` or
    ``<stem>_mask.png``). With masks, every defective image needs one and every
    mask must pair with a defective image; without, the images have labels only.
    """
    masks = masks or []
    if masks and len(masks) not in (1, len(abnormal)):
        raise DataError(f"{len(masks)} --masks folders for {len(abnormal)} --abnormal folders: give one masks "
                        f"folder for all, or one per --abnormal folder in the same order")
    records: list[ImageRecord] = []
    for uri in normal:
        files = find_images(uri, "a folder of normal images for --normal")
        if not files:
            raise DataError(f"no images in --normal {uri!r}: give a folder, prefix or glob of normal images")
        records += [ImageRecord(f, 0, GOOD) for f in files]
    groups: list[list[ImageRecord]] = []
    for uri in abnormal:
        files = find_images(uri, "a folder of defective images for --abnormal")
        if not files:
            raise DataError(f"no images in --abnormal {uri!r}: give a folder, prefix or glob of defective images")
        groups.append([ImageRecord(f, 1, _folder_name(uri)) for f in files])
    mask_groups = [_mask_files(uri) for uri in masks]
    defective = [r for group in groups for r in group]
    _refuse_overlap({"--normal": [r.uri for r in records], "--abnormal": [r.uri for r in defective],
                     "--masks": [m for group in mask_groups for m in group]})
    if len(mask_groups) == 1:
        _attach_masks(defective, mask_groups[0], masks[0])
    elif mask_groups:
        for group, mask_files, uri in zip(groups, mask_groups, masks):
            _attach_masks(group, mask_files, uri)
    return records + defective


def _mask_files(uri: str) -> list[str]:
    files = find_images(uri, "a folder of masks for --masks")
    if not files:
        raise DataError(f"no masks in --masks {uri!r}: give a folder, prefix or glob of mask images")
    return files


def _attach_masks(defective: list[ImageRecord], masks: list[str], where: str) -> None:
    """Pair every defective image with its mask by name; DataError for what pairs with nothing."""
    by_stem: dict[str, str] = {}
    for m in masks:
        if (stem := _mask_stem(m)) in by_stem:
            raise DataError(f"two masks for images named {stem!r} in --masks {where!r}: {by_stem[stem]!r} and {m!r}")
        by_stem[stem] = m
    seen: dict[str, str] = {}
    for rec in defective:
        if (stem := _stem(rec.uri)) in seen:
            raise DataError(f"two defective images named {stem!r} ({seen[stem]!r} and {rec.uri!r}) share the "
                            f"masks folder {where!r}: masks are paired by name, so give one --masks folder "
                            f"per --abnormal folder")
        seen[stem] = rec.uri
    unpaired = [m for s, m in by_stem.items() if s not in seen]
    if unpaired:
        raise DataError(f"{len(unpaired)} of {len(masks)} masks in {where!r} pair with no defective image: "
                        f"{_examples(unpaired)}; name a mask <image stem>.png or <image stem>_mask.png")
    missing = [rec.uri for rec in defective if _stem(rec.uri) not in by_stem]
    if missing:
        raise DataError(f"{len(missing)} of {len(defective)} defective images have no mask in {where!r}: "
                        f"{_examples(missing)}; give every defective image a mask, or no --masks "
                        f"for image metrics only")
    for rec in defective:
        rec.mask_uri = by_stem[_stem(rec.uri)]


def _refuse_overlap(files: dict[str, list[str]]) -> None:
    """A file listed under two of the flags (a --normal folder holding the defects, say) is an error."""
    seen: dict[str, str] = {}  # absolute URI -> the flag it was listed under first
    for flag, uris in files.items():
        keys = {storage.absolute_uri(u): u for u in uris}
        both = [u for k, u in keys.items() if k in seen]
        if both:
            first = seen[storage.absolute_uri(both[0])]
            raise DataError(f"{len(both)} files are both under {first} and {flag}: {_examples(both)}; "
                            f"give folders that do not contain each other")
        seen.update((k, flag) for k in keys)


# ------------------------------------------------------------------ loading
def load_images(records: list[ImageRecord], size: int, threads: int = 8) -> ImageSet:
    """Read and decode the records' images (and masks) in parallel threads."""

    def load(rec: ImageRecord) -> tuple[np.ndarray, np.ndarray]:
        try:
            image = load_image(storage.read_bytes(rec.uri), size).pixels
        except DataError as e:
            raise DataError(f"{rec.uri}: {e}") from e
        mask = (decode_mask(storage.read_bytes(rec.mask_uri), size) if rec.mask_uri
                else np.zeros((size, size), dtype=bool))
        return image, mask

    with ThreadPoolExecutor(threads) as pool:
        pairs = list(pool.map(load, records))
    images = np.stack([p[0] for p in pairs]) if pairs else np.zeros((0, size, size, 3), np.uint8)
    masks = np.stack([p[1] for p in pairs]) if pairs else np.zeros((0, size, size), bool)
    return ImageSet(records=list(records), images=images, masks=masks)


def split_holdout(records: list, fraction: float, seed: int) -> tuple[list, list]:
    """Deterministically hold back a share of records: (train, holdout)."""
    if not 0 <= fraction < 1:
        raise DataError(f"holdout fraction must be in [0, 1), not {fraction}")
    n_hold = int(round(len(records) * fraction))
    if fraction > 0 and len(records) >= 4:
        n_hold = max(n_hold, 2)
    order = np.random.default_rng(seed).permutation(len(records))
    hold = set(order[:n_hold].tolist())
    train = [r for i, r in enumerate(records) if i not in hold]
    if not train:
        raise DataError(f"only {len(records)} training images: too few to hold back {fraction:.0%}")
    return train, [r for i, r in enumerate(records) if i in hold]
