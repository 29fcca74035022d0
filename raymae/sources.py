"""What a scoring run reads: image files and tar shards, listed from URIs, read as bytes.

An input URI (local path or ``s3://``) is one of

* a prefix (folder): every image and tar below it, recursively;
* a glob (``*``, ``?``, ``[``): every image and tar it matches;
* a single file: scored whatever its extension.

Tar shards (``.tar``, and compressed ``.tar.gz``/``.tgz``), WebDataset-style or
not, are read as a stream: every member with an image extension becomes one
row named ``archive.tar#member``; other members (``.json``, ``.cls``...) are
not images and are skipped. Members are read into memory only, never extracted,
so a member named ``../x.png`` or ``/etc/x.png`` is just a name. Reading never
raises: a file or member that cannot be read becomes a :class:`RawImage` whose
``error`` says why, so one bad file never fails the run and never disappears
from the output.

Input sizes are bounded (:class:`Limits`): bytes per file or member, and members
per archive; what is over a limit is an error row, not a crash or a stall.
"""

from __future__ import annotations

import tarfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterator

from raymae import storage
from raymae.data import IMAGE_EXTENSIONS, DataError

TAR_EXTENSIONS = (".tar", ".tar.gz", ".tgz")
# Files and tar members above this size are refused unread (a row says so).
MAX_FILE_BYTES = 256 * 1024 * 1024
# Archives are read up to this many members (of any kind); a row says when one holds more.
MAX_TAR_MEMBERS = 100_000

IMAGE, TAR = "image", "tar"


@dataclass(frozen=True)
class Source:
    """One listed file: an image, or a tar archive of images."""

    uri: str
    kind: str    # IMAGE or TAR
    size: int    # bytes, as listed


@dataclass
class Listing:
    """The sources of a run, sorted by URI, and the files skipped as neither image nor tar."""

    sources: list[Source]
    skipped: list[str] = field(default_factory=list)

    @property
    def n_images(self) -> int:
        return sum(s.kind == IMAGE for s in self.sources)

    @property
    def n_archives(self) -> int:
        return sum(s.kind == TAR for s in self.sources)


@dataclass(frozen=True)
class Limits:
    """How much of the input one file may make raymae read."""

    max_file_bytes: int = MAX_FILE_BYTES    # per file, and per tar member
    max_tar_members: int = MAX_TAR_MEMBERS  # per archive, members of any kind


@dataclass
class RawImage:
    """One image's bytes, or why they could not be read (``data`` is then None)."""

    image_uri: str
    source_uri: str
    data: bytes | None
    error: str | None = None


def kind_of(name: str) -> str | None:
    lower = name.lower()
    if lower.endswith(TAR_EXTENSIONS):
        return TAR
    if lower.endswith(IMAGE_EXTENSIONS):
        return IMAGE
    return None


# ------------------------------------------------------------------ listing
def list_sources(uris: list[str]) -> Listing:
    """Expand input URIs into sources; raises DataError for a missing or empty input."""
    if not uris:
        raise DataError("no input given")
    found: dict[str, Source] = {}
    skipped: list[str] = []
    for uri in uris:
        sources, skip = _list_one(uri)
        if not sources:
            hint = f" (found only non-image files, e.g. {skip[0]!r})" if skip else ""
            raise DataError(f"no images or .tar shards found in {uri!r}{hint}")
        found.update((s.uri, s) for s in sources)
        skipped += skip
    return Listing(sorted(found.values(), key=lambda s: s.uri), sorted(set(skipped)))


def _list_one(uri: str) -> tuple[list[Source], list[str]]:
    fs, path = storage.resolve(uri)
    try:
        if storage.is_glob(path):
            infos = fs.glob(path, detail=True)
            explicit = False
        elif fs.isdir(path):
            infos = fs.find(path, detail=True)
            explicit = False
        elif fs.isfile(path):
            infos = {path: fs.info(path)}
            explicit = True
        else:
            raise DataError(f"input not found: {uri!r}")
    except (FileNotFoundError, PermissionError, OSError) as e:
        raise DataError(f"cannot list {uri!r}: {e}") from e
    root = storage.fixed_prefix(path)
    sources, skipped = [], []
    for p, info in sorted(infos.items()):
        if info.get("type", "file") != "file":
            continue
        full = storage.found_uri(uri, p)
        if not explicit and storage.hidden(p[len(root):]):
            continue
        kind = kind_of(p) or (IMAGE if explicit else None)
        if kind is None:
            skipped.append(full)
            continue
        sources.append(Source(full, kind, int(info.get("size") or 0)))
    return sources, skipped


# ------------------------------------------------------------------ reading
def read_sources(sources: list[Source], threads: int = 16, limits: Limits = Limits()) -> Iterator[RawImage]:
    """Bytes of every image in the sources: loose files read in parallel threads, tars streamed."""
    images = [s for s in sources if s.kind == IMAGE]
    if images:
        with ThreadPoolExecutor(min(threads, len(images))) as pool:
            yield from pool.map(lambda s: read_image(s, limits.max_file_bytes), images)
    for s in sources:
        if s.kind == TAR:
            yield from read_tar(s, limits)


def read_image(source: Source, max_file_bytes: int = MAX_FILE_BYTES) -> RawImage:
    if source.size > max_file_bytes:
        return _too_large(source.uri, source.uri, source.size, max_file_bytes)
    try:
        fs, path = storage.resolve(source.uri)
        with fs.open(path, "rb") as f:
            data = f.read(max_file_bytes + 1)  # the listed size may be stale or missing
    except Exception as e:  # vanished, permission denied, network: the row says which
        return RawImage(source.uri, source.uri, None, f"cannot read file: {_reason(e)}")
    if len(data) > max_file_bytes:
        return _too_large(source.uri, source.uri, None, max_file_bytes)
    return RawImage(source.uri, source.uri, data)


def _too_large(uri: str, source: str, size: int | None, limit: int, what: str = "file") -> RawImage:
    size_text = f"{size} bytes" if size is not None else "more bytes than that"
    return RawImage(uri, source, None, f"{what} too large: {size_text}, limit {limit} (--max-file-bytes)")


def _reason(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def read_tar(source: Source, limits: Limits = Limits()) -> Iterator[RawImage]:
    """Stream a tar: one RawImage per image member, in archive order, nothing written to disk.

    A member that cannot be read is an error row; when the archive itself breaks
    off (truncated, not a tar), one error row named after the archive says after
    how many members, since the members beyond that point cannot be known. So
    does an archive with more than ``limits.max_tar_members`` members: the rows
    of the members before the limit are kept. An image member that is a link or
    a device rather than a regular file is an error row (it has no bytes of its own).
    """
    n_read = n_members = 0
    current = None
    try:
        fs, path = storage.resolve(source.uri)
        with fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r|*") as tar:
            for member in tar:
                n_members += 1
                if n_members > limits.max_tar_members:
                    yield RawImage(source.uri, source.uri, None,
                                   f"tar archive has more than {limits.max_tar_members} members "
                                   f"(--max-tar-members); read {n_read} image members, not the rest")
                    return
                if member.isdir() or kind_of(member.name) != IMAGE or storage.hidden(member.name):
                    continue
                uri = f"{source.uri}#{member.name}"
                if not member.isfile():
                    yield RawImage(uri, source.uri, None,
                                   f"tar member is a {_member_type(member)}, not a regular file")
                elif member.size > limits.max_file_bytes:
                    yield _too_large(uri, source.uri, member.size, limits.max_file_bytes, "tar member")
                else:
                    current = member.name
                    yield RawImage(uri, source.uri, tar.extractfile(member).read())
                    current = None
                n_read += 1
    except Exception as e:  # tarfile.ReadError, EOFError, zlib errors, I/O errors
        if current is not None:
            yield RawImage(f"{source.uri}#{current}", source.uri, None,
                           f"unreadable tar member (the archive cannot be read past it): {_reason(e)}")
        else:
            where = f"after {n_read} image members" if n_read else "before any image member"
            yield RawImage(source.uri, source.uri, None, f"unreadable tar archive ({where}): {_reason(e)}")


def split_member(image_uri: str) -> tuple[str, str | None]:
    """``archive.tar#member`` -> (archive URI, member name); any other URI -> (itself, None)."""
    archive, sep, member = image_uri.partition("#")
    if sep and member and kind_of(archive) == TAR:
        return archive, member
    return image_uri, None


def read_images(image_uris: list[str], limits: Limits = Limits(), threads: int = 16) -> dict[str, RawImage]:
    """Bytes of a few scored images again, by the ``image_uri`` scoring wrote: files, or tar members
    (each archive streamed once, up to its last wanted member), read as scoring reads them. Never
    raises: a file that is gone or unreadable now is a RawImage whose ``error`` says why."""
    files: list[Source] = []
    members: dict[str, set[str]] = {}
    for uri in dict.fromkeys(image_uris):
        archive, member = split_member(uri)
        if member is None:
            files.append(Source(uri, IMAGE, 0))  # size unknown: read_image checks the bytes it reads
        else:
            members.setdefault(archive, set()).add(member)
    out = {raw.image_uri: raw for raw in read_sources(files, threads, limits)}
    for archive, wanted in members.items():
        out.update(_read_members(archive, wanted, limits))
    return out


def _read_members(archive: str, wanted: set[str], limits: Limits) -> dict[str, RawImage]:
    found: dict[str, RawImage] = {}
    left = set(wanted)
    reason = "not in the archive"
    for raw in read_tar(Source(archive, TAR, 0), limits):
        member = split_member(raw.image_uri)[1]
        if member is None:  # the archive itself could not be read (further)
            reason = raw.error
            break
        if member in left:
            found[raw.image_uri] = raw
            left.discard(member)
            if not left:
                break
    for name in left:
        uri = f"{archive}#{name}"
        found[uri] = RawImage(uri, archive, None, reason)
    return found


def _member_type(member: tarfile.TarInfo) -> str:
    if member.issym():
        return f"symbolic link to {member.linkname!r}"
    if member.islnk():
        return f"hard link to {member.linkname!r}"
    return "device, FIFO or other special file"
