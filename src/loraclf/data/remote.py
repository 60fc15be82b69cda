"""Remote files (s3://, gs://, https://, ... anything fsspec knows): inputs are copied to a local
temporary folder once per process and read like local files; outputs are written locally and uploaded
when complete, so a failed run never leaves half a file behind on the remote side either.

Messages name the URL, never the temporary copy (:func:`shown`).
"""

from __future__ import annotations

import atexit
import contextlib
import re
import shutil
import tempfile
from pathlib import Path
from typing import Optional

from ..errors import DataError, EnvironmentError_

# scheme://... (two letters at least, so a Windows drive letter "C://" is not a URL); hf: has no "//"
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]+://")
# Which package fsspec needs for a protocol, for the one-line error when it is missing.
_PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs",
             "abfss": "adlfs", "http": "aiohttp", "https": "aiohttp"}

_copies: dict[str, Path] = {}  # URL -> its local copy (downloaded once per process)
_urls: dict[str, str] = {}     # local copy -> URL, for messages
_tmpdir: Optional[Path] = None


def is_url(path: object) -> bool:
    return isinstance(path, str) and bool(_URL.match(path))


def shown(path: object) -> str:
    """How a message names a file: its URL when it is the local copy of a remote one."""
    return _urls.get(str(path), str(path))


def _scratch() -> Path:
    global _tmpdir
    if _tmpdir is None:
        _tmpdir = Path(tempfile.mkdtemp(prefix="loraclf-remote-"))
        atexit.register(shutil.rmtree, _tmpdir, True)
    return _tmpdir


def _filesystem(url: str):
    """fsspec's filesystem for `url` and the path on it; a missing protocol package is one line."""
    try:
        import fsspec
    except ImportError:  # pragma: no cover - fsspec comes with datasets, a core dependency
        raise EnvironmentError_("reading URLs needs fsspec: pip install fsspec") from None
    protocol = url.split("://", 1)[0].lower()
    try:
        return fsspec.core.url_to_fs(url)
    except ImportError:
        package = _PACKAGES.get(protocol, f"the fsspec implementation of {protocol}://")
        raise EnvironmentError_(f"{url}: {protocol}:// needs {package}: pip install {package}") from None
    except ValueError as e:
        raise DataError(f"{url}: {protocol}:// is not a protocol fsspec knows ({e})") from None


def one_line(e: BaseException) -> str:
    """An exception as "Type: first line" (at most 200 characters of it), for one-line messages."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:200]}" if text else type(e).__name__


def _basename(url: str) -> str:
    """The file name of a URL (query and fragment dropped): its extension tells the format."""
    name = url.split("?", 1)[0].split("#", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    return re.sub(r"[^A-Za-z0-9._-]", "_", name) or "data"


def local_copy(url: str, what: str = "file") -> Path:
    """A local copy of the remote file `url`, downloaded on first use (the same URL is read once per
    process). `what` names it in errors (e.g. "data.train")."""
    if url in _copies:
        return _copies[url]
    fs, path = _filesystem(url)
    folder = Path(tempfile.mkdtemp(dir=_scratch()))
    local = folder / _basename(url)
    try:
        fs.get_file(path, str(local))
    except FileNotFoundError:
        raise DataError(f"{what}: not found: {url}") from None
    except Exception as e:  # noqa: BLE001 - every remote filesystem raises its own types
        raise DataError(f"{what}: cannot read {url} ({one_line(e)})") from None
    if not local.is_file():
        raise DataError(f"{what}: {url} is not a file")
    _copies[url], _urls[str(local)] = local, url
    return local


def local_output(url: str) -> Path:
    """Where to write an output that will be uploaded to `url` (see :func:`upload`); checks the protocol
    is usable before any work is done."""
    _filesystem(url)
    return Path(tempfile.mkdtemp(dir=_scratch())) / _basename(url)


def upload(local: Path, url: str) -> None:
    """Put the finished local file at `url` (one PUT, so readers never see half of it). The local copy is
    removed once uploaded; if the upload fails it is kept, and the message says where."""
    fs, path = _filesystem(url)
    try:
        fs.put_file(str(local), path)
    except Exception as e:  # noqa: BLE001 - as in local_copy
        raise EnvironmentError_(f"cannot write {url} ({one_line(e)}); the output is kept in {local}") from None
    local.unlink(missing_ok=True)


@contextlib.contextmanager
def output(dest: str):
    """The local path to write the output `dest` to: `dest` itself, or for a URL a local file uploaded to it
    once the block ends without an error."""
    if not is_url(dest):
        yield dest
        return
    local = local_output(dest)
    yield str(local)
    upload(local, dest)
