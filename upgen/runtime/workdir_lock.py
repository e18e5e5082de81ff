"""One run per work directory: W/.lock, held for a training run's life.

Two `upgen train` processes on one workdir would resume from each other's checkpoints and
delete each other's steps. The first takes the lock; a second one stops with one line that
names the holder. On a local disk the lock is created with O_CREAT | O_EXCL (atomic); a lock
left by a killed process on this host (its pid no longer alive) is stale and taken over with
a warning. A lock from another host cannot be checked from here: the error says how to
remove it once that run is known to be dead. In cloud storage (gs://) the lock is written
when no lock exists (check, then write: not atomic, but it catches the common mistake, a
second launch on a running workdir). A multi-host run takes it once, from process 0.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import time
from typing import Any, Optional

import jax

from upgen import errors
from upgen import paths

LOCK_FILE = ".lock"
log = logging.getLogger("upgen.train")


class WorkdirInUse(errors.UserError, RuntimeError):
  pass


def _holder() -> dict[str, Any]:
  return {"host": socket.gethostname(), "pid": os.getpid(),
          "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # Alive, another user's.
    return True
  return True


def _read(path: str) -> Optional[dict[str, Any]]:
  try:
    with paths.open(path, "r") as f:
      holder = json.load(f)
  except (FileNotFoundError, json.JSONDecodeError, OSError):
    return None
  return holder if isinstance(holder, dict) else None


def _create_local(path: str, holder: dict[str, Any]) -> bool:
  """Creates the lock file; False when one exists."""
  try:
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
  except FileExistsError:
    return False
  with os.fdopen(fd, "w") as f:
    json.dump(holder, f)
  return True


class WorkdirLock:
  """`with WorkdirLock(workdir):` around a run (process 0 holds it for every process)."""

  def __init__(self, workdir: str):
    self.path = paths.join(workdir, LOCK_FILE)
    self._held = False

  def acquire(self) -> None:
    if jax.process_index() != 0:
      return
    holder = _holder()
    workdir = os.path.dirname(self.path)
    if not paths.is_remote(workdir) and os.path.exists(workdir) and not os.path.isdir(workdir):
      raise errors.ConfigError(f"--workdir {workdir}: a file, not a directory")
    paths.makedirs(workdir)
    for _ in range(2):  # A second try after removing a stale lock.
      if paths.is_remote(self.path):
        if _read(self.path) is None:
          paths.write_atomic(self.path, json.dumps(holder))
          self._held = True
          return
      elif _create_local(self.path, holder):
        self._held = True
        return
      other = _read(self.path) or {}
      if (other.get("host") == holder["host"] and isinstance(other.get("pid"), int)
          and not _alive(other["pid"])):
        log.warning("%s: a lock of pid %d on this host, which is no longer running (killed?); "
                    "taking it over", self.path, other["pid"])
        paths.remove(self.path)
        continue
      raise WorkdirInUse(
          f"{os.path.dirname(self.path)} is in use by another run (pid {other.get('pid')} on "
          f"host {other.get('host')}, since {other.get('started')}; {self.path}); wait for "
          "it, use another --workdir, or delete the lock file if that run is dead")
    raise WorkdirInUse(f"{self.path}: could not take the lock")

  def release(self) -> None:
    if self._held:
      self._held = False
      try:
        paths.remove(self.path)
      except FileNotFoundError:
        pass

  def __enter__(self) -> "WorkdirLock":
    self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()
