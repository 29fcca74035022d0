"""One filesystem layer for local paths and object storage (``s3://``).

Everything that reads or writes a URI goes through :func:`resolve`, which uses
fsspec (s3fs for ``s3://``). Endpoint, region and credentials come from the
standard AWS environment variables and profiles (``AWS_ENDPOINT_URL`` makes
MinIO, Ceph or a test server work); nothing secret is ever passed as an argument.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import fsspec
from fsspec.core import url_to_fs

SUPPORTED_SCHEMES = ("file", "local", "s3", "s3a", "memory")


class StorageError(ValueError):
    """A URI that cannot be used, explained for a person."""


def scheme_of(uri: str) -> str:
    return uri.split("://", 1)[0].lower() if "://" in uri else "file"


def is_remote(uri: str) -> bool:
    return scheme_of(uri) not in ("file", "local")


def resolve(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path inside it) for a local path or a supported URI."""
    if not isinstance(uri, str) or not uri.strip():
        raise StorageError("an empty path or URI was given")
    scheme = scheme_of(uri)
    if scheme not in SUPPORTED_SCHEMES:
        raise StorageError(
            f"unsupported URI scheme {scheme!r} in {uri!r}: use a local path or s3://bucket/prefix")
    if scheme in ("s3", "s3a"):
        bucket = uri.split("://", 1)[1].split("/", 1)[0]
        if not bucket:
            raise StorageError(f"{uri!r} names no bucket: write s3://bucket/prefix")
        fs, path = url_to_fs(uri, **_s3_options())
        fs.retries = S3_READ_RETRIES  # a class attribute in s3fs, not an option (same value every time)
        return fs, path
    if scheme in ("file", "local"):
        path = uri.split("://", 1)[1] if "://" in uri else uri
        return url_to_fs(str(Path(path).expanduser().resolve()))
    return url_to_fs(uri)


# Transient object-store failures (503 SlowDown, 5xx, dropped connections) are
# retried by botocore, in its "standard" mode, up to this many attempts per
# request (AWS_MAX_ATTEMPTS / AWS_RETRY_MODE override both); a response body
# that breaks off is read again by s3fs, up to S3_READ_RETRIES times.
S3_MAX_ATTEMPTS = 10
S3_READ_RETRIES = 10


def _s3_options() -> dict:
    """s3fs options from the environment (botocore reads credentials itself)."""
    options: dict = {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        options["client_kwargs"] = {"endpoint_url": endpoint}
    if not (os.environ.get("AWS_MAX_ATTEMPTS") or os.environ.get("AWS_RETRY_MODE")):
        options["config_kwargs"] = {"retries": {"mode": "standard", "max_attempts": S3_MAX_ATTEMPTS}}
    return options


def join(uri: str, *parts: str) -> str:
    """Join path parts onto a local path or URI with '/'."""
    return "/".join([uri.rstrip("/"), *[p.strip("/") for p in parts]])


GLOB_CHARS = "*?["


def is_glob(uri: str) -> bool:
    return any(c in uri for c in GLOB_CHARS)


def fixed_prefix(path: str) -> str:
    """The folder part of a path before any glob character (the path itself when there is none)."""
    cut = min((path.index(c) for c in GLOB_CHARS if c in path), default=None)
    return path if cut is None else path[:cut].rsplit("/", 1)[0]


def hidden(path: str) -> bool:
    """Dot-files and _markers (``.DS_Store``, ``_SUCCESS``) and anything inside such folders.

    ``.`` and ``..`` are path steps, not hidden names: ``tar -C dir .`` names its
    members ``./000.png``, and those are images like any other.
    """
    return any(part.startswith((".", "_")) for part in path.split("/") if part not in ("", ".", ".."))


def found_uri(uri: str, found: str) -> str:
    """A path the filesystem returned for ``uri``, written back in the form the user gave (scheme kept)."""
    if is_remote(uri):
        scheme = scheme_of(uri)
        return found if "://" in found else f"{scheme}://{found}"
    return found


def read_bytes(uri: str) -> bytes:
    fs, path = resolve(uri)
    with fs.open(path, "rb") as f:
        return f.read()


def write_bytes(uri: str, data: bytes) -> None:
    fs, path = resolve(uri)
    parent = path.rsplit("/", 1)[0]
    if parent:
        fs.makedirs(parent, exist_ok=True)
    with fs.open(path, "wb") as f:
        f.write(data)


def absolute_uri(uri: str) -> str:
    """A local path made absolute (Ray's storage_path needs that); URIs unchanged."""
    return uri if is_remote(uri) else str(Path(uri.split("://", 1)[-1]).expanduser().resolve())


def arrow_filesystem(uri: str):
    """(pyarrow filesystem, path) for Ray's writers, through the same fsspec layer as everything else.

    Local paths become absolute (Ray workers do not share the driver's working
    directory); ``s3://`` goes through s3fs, so the endpoint and credentials are
    the same ones every other read and write uses.
    """
    from pyarrow.fs import FSSpecHandler, LocalFileSystem, PyFileSystem

    if not is_remote(uri):
        return LocalFileSystem(), absolute_uri(uri)
    fs, path = resolve(uri)
    return PyFileSystem(FSSpecHandler(fs)), path


def check_writable(uri: str) -> None:
    """Write and delete a small probe object under ``uri``; StorageError says why it cannot be written.

    Local folders the probe had to create are removed again; a missing bucket is an
    error, not created.
    """
    import uuid

    fs, path = resolve(uri)
    created = None
    if not is_remote(uri):
        for folder in [Path(path), *Path(path).parents]:
            if folder.exists():
                break
            created = folder  # the outermost folder the probe creates
    probe = f"{path.rstrip('/')}/.write-probe-{uuid.uuid4().hex[:12]}"
    try:
        if created is not None:  # object stores have no folders (and s3fs would create a missing bucket)
            fs.makedirs(path, exist_ok=True)
        with fs.open(probe, "wb") as f:
            f.write(b"")
        fs.rm(probe)
    except Exception as e:  # PermissionError, NoSuchBucket, read-only file system, network
        raise StorageError(f"cannot write to {uri!r}: {type(e).__name__}: {e}") from e
    finally:
        if created is not None and created.exists() and not any(p.is_file() for p in created.rglob("*")):
            shutil.rmtree(created)
