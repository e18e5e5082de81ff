"""Files on local disk or in cloud storage (gs://, s3://): the few operations upgen needs.

A path with a URL scheme ("gs://bucket/data") goes through `etils.epath`, which hands
gs:// and s3:// to fsspec (gcsfs / s3fs must be installed; upgen's `gcs` extra has gcsfs and
google-cloud-storage, which orbax uses on gs://: `pip install -e '.[gcs]'`); every other
path goes through the plain os / builtin calls, unchanged. Object stores differ from a disk
in three ways that shape this module:

  * no directories: `makedirs` does nothing for a remote path (an object's name is its
    whole path), and `list_names` of a prefix with no objects is empty;
  * an object appears whole when its upload finishes, so `write_atomic` writes a remote
    file directly where a local one goes through a temporary file and a rename;
  * no appending: `open_synced` (metrics.jsonl, TensorBoard events) writes to a local
    temporary copy and uploads all of it on flush (at most every SYNC_SECONDS) and on
    close, as TensorFlow's GCS writer does.

Random reads of remote records use fsspec's `cat_ranges` (concurrent ranged reads, no
read-ahead), see `read_ranges`.
"""
from __future__ import annotations

import builtins
import contextlib
import hashlib
import os
import posixpath
import re
import shutil
import tempfile
import time
from typing import Any, IO, Iterator, Sequence

from etils import epath

from upgen import errors

SYNC_SECONDS = 30.0  # open_synced uploads at most this often (and always on close).
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_GCS_EXTRA = "the packages of upgen's gcs extra (gcsfs, google-cloud-storage)"
_PACKAGES = {"gs": _GCS_EXTRA, "gcs": _GCS_EXTRA, "s3": "s3fs", "az": "adlfs",
             "hf": "huggingface_hub"}


class MissingFilesystemError(errors.UserError, ImportError):
  """A remote path needs an fsspec filesystem package that is not installed."""


def is_remote(path: Any) -> bool:
  """Whether `path` is a URL (gs://, s3://, ...) rather than a local path."""
  return _SCHEME.match(os.fspath(path)) is not None


@contextlib.contextmanager
def remote_errors(path: Any) -> Iterator[None]:
  """Turns an ImportError of a missing cloud client (fsspec's "install gcsfs", orbax's
  google.cloud.storage) into one naming the path and the fix."""
  try:
    yield
  except MissingFilesystemError:
    raise
  except ImportError as e:
    match = _SCHEME.match(os.fspath(path))
    scheme = match.group(1) if match else "remote"
    needs = _PACKAGES.get(scheme, f"the fsspec filesystem for {scheme}://")
    fix = ("pip install -e '.[gcs]'; launch/worker.sh setup installs them"
           if needs == _GCS_EXTRA else f"pip install {needs}")
    raise MissingFilesystemError(
        f"{path}: {scheme}:// paths need {needs}, not installed here ({fix}): {e}") from e


def _epath(path: Any) -> epath.Path:
  return epath.Path(os.fspath(path))


def join(base: Any, *names: str) -> str:
  base = os.fspath(base)
  return posixpath.join(base, *names) if is_remote(base) else os.path.join(base, *names)


def absolute(path: Any) -> str:
  """An absolute local path; a URL unchanged."""
  path = os.fspath(path)
  return path if is_remote(path) else os.path.abspath(path)


def exists(path: Any) -> bool:
  if not is_remote(path):
    return os.path.exists(path)
  with remote_errors(path):
    return _epath(path).exists()


def isfile(path: Any) -> bool:
  if not is_remote(path):
    return os.path.isfile(path)
  with remote_errors(path):
    return _epath(path).is_file()


def makedirs(path: Any) -> None:
  """os.makedirs(path, exist_ok=True); nothing for a remote path (no directories there)."""
  if not is_remote(path):
    os.makedirs(path, exist_ok=True)


def list_names(directory: Any) -> list[str]:
  """Names of the entries of `directory` ([] when it does not exist)."""
  if not is_remote(directory):
    return os.listdir(directory) if os.path.isdir(directory) else []
  with remote_errors(directory):
    p = _epath(directory)
    return [child.name for child in p.iterdir()] if p.is_dir() else []


def remove(path: Any) -> None:
  if not is_remote(path):
    os.remove(path)
    return
  with remote_errors(path):
    _epath(path).unlink()


def remove_tree(path: Any) -> None:
  """Deletes a directory and everything under it (nothing if it is gone already)."""
  if not is_remote(path):
    shutil.rmtree(path, ignore_errors=True)
    return
  with remote_errors(path):
    p = _epath(path)
    if p.exists():
      p.rmtree()


def replace(src: Any, dst: Any) -> None:
  """os.replace; for remote paths a server-side copy and delete."""
  if not is_remote(src):
    os.replace(src, dst)
    return
  with remote_errors(src):
    _epath(src).replace(_epath(dst))


def open(path: Any, mode: str = "r") -> IO:  # pylint: disable=redefined-builtin
  """builtins.open for a local path, epath's streaming file object for a remote one (whose
  writes become visible when it is closed)."""
  if not is_remote(path):
    return builtins.open(path, mode)
  with remote_errors(path):
    return _epath(path).open(mode)


def read_bytes(path: Any) -> bytes:
  with open(path, "rb") as f:
    return f.read()


def write_atomic(path: Any, data: str | bytes) -> None:
  """Writes the whole file so that readers see the old or the new contents, never a part."""
  mode = "wb" if isinstance(data, bytes) else "w"
  if is_remote(path):
    with open(path, mode) as f:
      f.write(data)
    return
  tmp = os.fspath(path) + ".tmp"
  with open(tmp, mode) as f:
    f.write(data)
  os.replace(tmp, path)


def version(path: Any) -> Any:
  """A value that changes when the file is rewritten: the local mtime in ns; for a remote
  file a hash of its contents (object stores report modification times inconsistently)."""
  if not is_remote(path):
    return os.stat(path).st_mtime_ns
  return hashlib.sha256(read_bytes(path)).hexdigest()


def read_ranges(path: Any, starts: Sequence[int], ends: Sequence[int]) -> list[bytes]:
  """The bytes [starts[i], ends[i]) of one file, read concurrently for a remote file."""
  if not is_remote(path):
    with builtins.open(path, "rb") as f:
      return [_pread(f, s, e) for s, e in zip(starts, ends)]
  import fsspec  # Optional (the gcs extra): only for remote paths.
  path = os.fspath(path)
  with remote_errors(path):
    fs, _ = fsspec.core.url_to_fs(path)
    return fs.cat_ranges([path] * len(starts), list(starts), list(ends), on_error="raise")


def _pread(f: IO, start: int, end: int) -> bytes:
  f.seek(start)
  return f.read(end - start)


class _SyncedFile:
  """A remote file written through a local temporary copy, uploaded whole on flush (at most
  every SYNC_SECONDS, the first flush at once) and on close."""

  def __init__(self, path: str, mode: str):
    self.path, self._binary = path, "b" in mode
    self._local = tempfile.TemporaryFile()
    if mode.startswith("a") and exists(path):
      with open(path, "rb") as f:
        shutil.copyfileobj(f, self._local)
    self._uploaded_at = -float("inf")
    self.closed = False

  def write(self, data: str | bytes) -> int:
    self._local.write(data if self._binary else data.encode("utf-8"))
    return len(data)

  def writelines(self, lines) -> None:
    for line in lines:
      self.write(line)

  def flush(self) -> None:
    if time.monotonic() - self._uploaded_at >= SYNC_SECONDS:
      self._upload()

  def _upload(self) -> None:
    self._local.flush()
    self._local.seek(0)
    with open(self.path, "wb") as f:
      shutil.copyfileobj(self._local, f)
    self._local.seek(0, os.SEEK_END)
    self._uploaded_at = time.monotonic()

  def close(self) -> None:
    if not self.closed:
      self._upload()
      self._local.close()
      self.closed = True

  def __enter__(self) -> "_SyncedFile":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def open_synced(path: Any, mode: str) -> Any:
  """A log file opened for writing ("w", "a", "wb", "ab") whose flush() makes what was
  written visible: builtins.open for a local path, else a _SyncedFile."""
  if not is_remote(path):
    return builtins.open(path, mode)
  return _SyncedFile(os.fspath(path), mode)
