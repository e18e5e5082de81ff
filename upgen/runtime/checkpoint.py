"""Orbax checkpoints of the train state and the data iterator, and the run's config.

Layout of a run directory (the trainer's workdir):
  config.json              the config the run trains with
  data_spec.json           the sizes its data fixes (upgen/data/spec.py): the model is
                           built from config.json's model group and this
  checkpoints/<step>/      orbax: item "state" (step, params, opt_state), item "data" (the
                           input iterator's state, JSON), written asynchronously
  metrics.jsonl            one JSON object per logged step
  tensorboard/             event files

orbax commits a checkpoint by renaming a finished temporary directory, so a process killed
mid-save leaves the previous checkpoint as the latest one. The trainer never hands a state
with a non-finite loss to `save`.

The workdir may be a gs:// URL: config.json goes through upgen.paths, and the checkpoint
directory is handed to orbax as the URL itself (orbax writes it with epath and tensorstore,
and on GCS marks a finished checkpoint with a commit file instead of renaming it).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from typing import Any, Optional

import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from upgen import errors
from upgen import paths
from upgen import rundir
from upgen.data.spec import DataSpec
from upgen.runtime import migrate

log = logging.getLogger("upgen.train")


class CheckpointReadError(errors.StorageError):
  """A checkpoint that exists could not be read (permissions, I/O): not a config mismatch."""


def save_run_config(workdir: str, config: ml_collections.ConfigDict, spec: DataSpec) -> None:
  """config.json and data_spec.json (process 0; each written atomically)."""
  if jax.process_index() != 0:
    return
  paths.makedirs(workdir)
  paths.write_atomic(paths.join(workdir, rundir.CONFIG_FILE),
                     config.to_json_best_effort(indent=2, sort_keys=True))
  paths.write_atomic(paths.join(workdir, rundir.SPEC_FILE), spec.to_json())


def _to_tuples(x):
  """JSON turns tuples into lists; configs keep tuples (mesh rules, channel multipliers)."""
  if isinstance(x, dict):
    return {k: _to_tuples(v) for k, v in x.items()}
  if isinstance(x, list):
    return tuple(_to_tuples(v) for v in x)
  return x


def _read_json(path: str) -> Any:
  try:
    with paths.open(path) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not valid JSON ({e})") from e


def load_run_config(workdir: str) -> tuple[ml_collections.ConfigDict, DataSpec]:
  """(config, data spec) of a run directory; runs written before data_spec.json existed are
  migrated (upgen/runtime/migrate.py) or refused with the key that is missing."""
  path = paths.join(workdir, rundir.CONFIG_FILE)
  if not paths.exists(path):
    raise errors.NotFound(f"{path}: no config.json - is {workdir!r} a upgen run directory?")
  raw = _read_json(path)
  spec_path = paths.join(workdir, rundir.SPEC_FILE)
  if paths.exists(spec_path):
    spec = DataSpec.from_dict(_read_json(spec_path), spec_path)
    raw = migrate.drop_retired(raw, path)
  elif migrate.is_v1(raw):
    raw, spec = migrate.from_v1(raw, path)
  elif paths.exists(paths.join(workdir, rundir.REPORT_FILE)):
    raise errors.NotFound(f"{workdir}: an import (`upgen import hf`), not a trained run: its "
                          "image sizes come from the records a run trains on; train from it "
                          "with --config.train.init_from, then use that run's directory")
  else:
    raise errors.NotFound(f"{spec_path}: missing; the run's model cannot be rebuilt without "
                            "the sizes of its data (train again in a new --workdir)")
  return ml_collections.ConfigDict(_to_tuples(raw)), spec


class Checkpointer:
  """Saves and restores {"state", "data"} under workdir/checkpoints with keep-N."""

  def __init__(self, workdir: str, *, keep: int = 3, async_save: bool = True):
    self.directory = paths.absolute(paths.join(workdir, rundir.CHECKPOINT_DIR))
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=async_save)
    with paths.remote_errors(self.directory):  # Orbax needs gcsfs for gs:// directories too.
      self._manager = ocp.CheckpointManager(
          self.directory, options=options, item_names=("state", "data"))

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def save(self, step: int, state: dict[str, Any], data_state: Optional[dict] = None,
           *, force: bool = False) -> bool:
    """Starts writing checkpoint `step` (asynchronously). A checkpoint that cannot be written
    (no room for it, permissions) is a StorageError naming the path, what is free and the
    checkpoints that remain; nothing older is touched."""
    self._check_space(int(step), state)
    args = ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave(data_state if data_state is not None else {}))
    try:
      return self._manager.save(int(step), args=args, force=force)
    except Exception as e:
      self._raise_write_failure(int(step), e)
      raise

  def _complete_steps(self) -> str:
    steps = self._manager.all_steps()
    return ", ".join(str(s) for s in steps) if steps else "none"

  def _check_space(self, step: int, state: dict[str, Any]) -> None:
    """Refuses, before writing anything, a checkpoint the disk cannot hold (local disks;
    the same answer on every process)."""
    if paths.is_remote(self.directory):
      return
    self._wait(step)  # The last save's bytes are on disk before free space is read.
    need = sum(sum(s.data.nbytes for s in x.addressable_shards) if hasattr(x, "addressable_shards")
               else int(getattr(x, "nbytes", 0)) for x in jax.tree.leaves(state))
    free = shutil.disk_usage(_existing_parent(self.directory)).free
    short = free < need * 1.05 + (1 << 20)
    if jax.process_count() > 1:
      short = bool(np.any(multihost_utils.process_allgather(np.asarray(short))))
    if short:
      self._manager.close()
      raise errors.StorageError(
          f"{self.directory}/{step}: checkpoint not written: it needs about "
          f"{need / 1e6:.1f} MB and {_existing_parent(self.directory)} has {free / 1e6:.1f} MB "
          f"free (no space left on device). Checkpoints on disk, intact: "
          f"{self._complete_steps()}. Free some space (or lower "
          "config.train.keep_checkpoints) and run the same command to resume.")

  def _raise_write_failure(self, step: int, e: BaseException) -> None:
    """A StorageError for an orbax write that failed on the disk; returns if `e` is not one."""
    reason = _io_failure(e, _WRITE_ERRORS)
    if not reason:
      return
    for name in paths.list_names(self.directory):
      if ".orbax-checkpoint-tmp" in name:  # The unfinished write; the finished ones stay.
        paths.remove_tree(paths.join(self.directory, name))
    free = shutil.disk_usage(_existing_parent(self.directory)).free
    raise errors.StorageError(
        f"{self.directory}/{step}: checkpoint not written ({reason}; "
        f"{free / 1e6:.1f} MB free). Checkpoints on disk, intact: {self._complete_steps()}. "
        "Fix the disk and run the same command to resume.") from None

  def _wait(self, step: int) -> None:
    try:
      self._manager.wait_until_finished()
    except Exception as e:
      self._raise_write_failure(step, e)
      raise

  def restore(self, abstract_state: dict[str, Any], step: Optional[int] = None
              ) -> tuple[int, dict[str, Any], dict]:
    step = self.latest_step() if step is None else step
    if step is None:
      raise errors.NotFound(f"{self.directory}: no checkpoint to restore")
    try:
      out = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
    except Exception as e:  # orbax wraps tensorstore read errors in a bare Exception.
      reason = _read_failure(e)
      if reason:  # The files: permissions, missing or corrupt data. Not the config.
        raise CheckpointReadError(f"{self.directory}/{step}: cannot read the checkpoint: "
                                  f"{reason}") from e
      if isinstance(e, (ValueError, KeyError, TypeError)):  # Tree or shapes differ.
        raise ValueError(
            f"{self.directory}/{step}: the checkpoint does not fit this config's state (a "
            f"changed model? {type(e).__name__}: {str(e)[:500]})") from e
      raise
    return step, out["state"], dict(out["data"] or {})

  def wait(self) -> None:
    self._wait(-1 if self.latest_step() is None else self.latest_step())

  def close(self) -> None:
    """Waits for the last write (a failed one raises StorageError) and shuts orbax down."""
    try:
      self.wait()
    finally:
      self._manager.close()


def state_dict(state) -> dict[str, Any]:
  out = {"step": state.step, "params": state.params, "opt_state": state.opt_state}
  if getattr(state, "ema_params", None) is not None:
    out["ema_params"] = state.ema_params
  return out


def uses_ema(config: ml_collections.ConfigDict) -> bool:
  """Whether the run keeps an EMA of its parameters (config.optim.ema_decay > 0)."""
  return float(config.optim.get("ema_decay", 0.0) or 0.0) > 0.0


# tensorstore's status codes for failures to read or write what is on disk.
_READ_ERRORS = ("PERMISSION_DENIED", "NOT_FOUND", "DATA_LOSS", "FAILED_PRECONDITION",
                "UNAVAILABLE", "UNKNOWN")
_WRITE_ERRORS = ("RESOURCE_EXHAUSTED", "PERMISSION_DENIED", "UNAVAILABLE", "DATA_LOSS",
                 "UNKNOWN")


def _io_failure(e: Optional[BaseException], codes: tuple[str, ...]) -> str:
  """What failed, if `e` (or its cause) is an I/O failure, else ""."""
  while e is not None:
    text = str(e).strip()
    if isinstance(e, OSError) or text.split(":", 1)[0] in codes:
      return f"{type(e).__name__}: {text.splitlines()[0][:400]}"
    e = e.__cause__ or e.__context__
  return ""


def _read_failure(e: BaseException) -> str:
  return _io_failure(e, _READ_ERRORS)


def _existing_parent(path: str) -> str:
  """The nearest existing directory at or above `path` (what disk_usage can measure)."""
  path = os.path.abspath(path)
  while not os.path.exists(path) and os.path.dirname(path) != path:
    path = os.path.dirname(path)
  return path


