"""Orbax checkpoints of the train state and the data iterator, and the run's config.

Layout of a run directory (the trainer's workdir):
  config.json              the config the run trains with
  data_spec.json           the sizes its data fixes (upgen/data/spec.py): the model is
                           built from config.json's model group and this
  checkpoints/<step>/      orbax: item "state" (step, params, opt_state), item "data" (the
                           input iterator's state, JSON), written asynchronously
  checkpoints/<step>.damaged/  a step that could not be read, set aside by the trainer
  metrics.jsonl            one JSON object per logged step
  tensorboard/             event files

orbax commits a checkpoint by renaming a finished temporary directory, so a process killed
mid-save leaves the previous checkpoint as the latest one, and its unfinished
`<step>.orbax-checkpoint-tmp-*` directory behind: the trainer (holding the workdir's lock,
process 0) removes those when it starts, with a warning naming them. The trainer never hands
a state with a non-finite loss to `save`.

Damaged checkpoints. `restore` takes the newest *intact* step: a step whose files are missing,
truncated or unreadable is skipped with one warning line (the step, the item and the error)
and the next older one is tried; when none can be read, a CheckpointReadError names every
step and why. A changed model is not damage: a step whose own tree metadata is readable and
differs from the state asked for (other paths or shapes) stops the restore with a ConfigError,
older steps untried. The trainer (`owner=True`) moves each damaged step it skipped to
`checkpoints/<step>.damaged` (renamed, not deleted: the files may be worth a look; delete them
when done). orbax's keep-N then counts only intact steps, so its garbage collection never
deletes the step the run resumed from to make room beside a damaged one, and the run can
write that step number again. Readers (`upgen sample`, evaluators, exports) only skip: they
change nothing in a run directory another process may be training in.

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
from upgen.runtime import orbax_noise

log = logging.getLogger("upgen.train")


class CheckpointReadError(errors.StorageError):
  """No checkpoint that exists could be read (missing, truncated or unreadable files): not a
  config mismatch."""


TMP_MARK = ".orbax-checkpoint-tmp"  # In the name of a step orbax had not finished writing.
DAMAGED_SUFFIX = ".damaged"  # checkpoints/<step>.damaged: a step set aside by the trainer.


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
  """Saves and restores {"state", "data"} under workdir/checkpoints with keep-N.

  `owner`: this process's run holds the workdir's lock (the trainer): on process 0 the
  unfinished writes a killed run left are removed now, and `restore` sets aside the damaged
  steps it skips.
  """

  def __init__(self, workdir: str, *, keep: int = 3, async_save: bool = True,
               owner: bool = False):
    self.directory = paths.absolute(paths.join(workdir, rundir.CHECKPOINT_DIR))
    self._owner = owner
    if owner and jax.process_index() == 0:
      self._remove_unfinished()
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=async_save)
    with paths.remote_errors(self.directory):  # Orbax needs gcsfs for gs:// directories too.
      self._manager = ocp.CheckpointManager(
          self.directory, options=options,
          item_handlers={"state": ocp.StandardCheckpointHandler(),
                         "data": ocp.JsonCheckpointHandler()})

  def _remove_unfinished(self) -> None:
    """Deletes the `<step>.orbax-checkpoint-tmp-*` directories a killed run left."""
    left = sorted(n for n in paths.list_names(self.directory) if TMP_MARK in n)
    if left:
      log.warning("%s: removing %s, unfinished checkpoint write%s of a run that was stopped "
                  "mid-save", self.directory, ", ".join(left), "s" if len(left) > 1 else "")
    for name in left:
      paths.remove_tree(paths.join(self.directory, name))

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
      if TMP_MARK in name:  # The unfinished write; the finished ones stay.
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
    """(step, state, data state) of `step`, or of the newest intact step: damaged newer steps
    are skipped with a warning each (and set aside by an owner). CheckpointReadError when no
    step can be read (a step asked for by number is that step or this error); ConfigError
    when a step does not fit `abstract_state` (a changed model). Every process of a
    multi-process run calls it: they agree on the step."""
    orbax_noise.quiet_abandoned_reads()
    steps = [step] if step is not None else sorted(self._manager.all_steps(), reverse=True)
    if not steps:
      raise errors.NotFound(f"{self.directory}: no checkpoint to restore")
    damaged = []  # (step, why)
    for s in steps:
      out, why = self._read(abstract_state, s)
      if jax.process_count() > 1:  # A step one process cannot read is skipped by all.
        failed = multihost_utils.process_allgather(np.asarray(out is None))
        if out is not None and bool(np.any(failed)):
          out, why = None, "unreadable on another process"
      if out is None:
        damaged.append((s, why))
        continue
      for bad, bad_why in damaged:
        moved = self._set_aside(bad) if self._owner else ""
        log.warning("%s/%d: damaged checkpoint skipped (%s); %s step %d instead%s",
                    self.directory, bad, bad_why, "resuming from" if self._owner else "using",
                    s, f"; moved to {moved}" if moved else "")
      if damaged and self._owner:
        if jax.process_count() > 1:
          multihost_utils.sync_global_devices("upgen: damaged checkpoints set aside")
        self._manager.reload()
      return s, out[0], out[1]
    if len(damaged) == 1:
      raise CheckpointReadError(f"{self.directory}/{damaged[0][0]}: cannot read the "
                                f"checkpoint: {damaged[0][1]}")
    raise CheckpointReadError(
        f"{self.directory}: no intact checkpoint: " +
        "; ".join(f"step {s}: {why}" for s, why in damaged) +
        " (restore the files; a run whose steps are all moved away trains from step 0)")

  def _check_fits(self, abstract_state: dict[str, Any], step: int) -> str:
    """ConfigError when the step's tree metadata is readable and names other arrays or shapes
    than `abstract_state`: the model changed. "" when it fits; what is wrong with it when it
    cannot be read (the read then says whether the step is damaged)."""
    try:
      with orbax_noise.absl_below(logging.ERROR):  # orbax warns of an item without metadata.
        meta = self._manager.item_metadata(step)["state"]
      tree = getattr(meta, "tree", meta)
    except Exception as e:  # pylint: disable=broad-except
      return f"unreadable ({_reason(e)})"
    if tree is None:
      return "missing"
    have, want = _shapes(tree), _shapes(abstract_state)
    if have == want:
      return ""
    diff = sorted((k for k in have.keys() | want.keys() if have.get(k) != want.get(k)),
                  key=lambda k: (not k.startswith("params/"), k))  # A parameter first.
    k = diff[0]
    raise errors.ConfigError(
        f"{self.directory}/{step}: the checkpoint does not fit this config's state (a changed "
        f"model? {k}: {have.get(k, 'absent')} in the checkpoint, {want.get(k, 'absent')} "
        f"for this config; {len(diff)} arrays differ). Use the config the run was trained "
        "with, or a new --workdir")

  def _read(self, abstract_state: dict[str, Any], step: int
            ) -> tuple[Optional[tuple[dict[str, Any], dict]], str]:
    """((state, data state), "") of `step`, or (None, why it cannot be read). The small
    data item is read first: a step whose data is damaged costs no array reads."""
    metadata = self._check_fits(abstract_state, step)
    items = (("data", ocp.args.JsonRestore()),
             ("state", ocp.args.StandardRestore(abstract_state)))
    out = {}
    for name, args in items:
      try:
        out[name] = self._manager.restore(step, args=ocp.args.Composite(**{name: args}))[name]
      except Exception as e:  # orbax wraps tensorstore's read errors in a bare Exception.
        why = _reason(e)
        if name == "state" and metadata and why not in metadata:
          why += f"; its tree metadata: {metadata}"
        return None, f"{name}: {why}"
    return (out["state"], dict(out["data"] or {})), ""

  def _set_aside(self, step: int) -> str:
    """Renames checkpoints/<step> to <step>.damaged (process 0); the new name."""
    names = set(paths.list_names(self.directory))
    name, i = f"{step}{DAMAGED_SUFFIX}", 1
    while name in names:
      name, i = f"{step}{DAMAGED_SUFFIX}.{i}", i + 1
    source, target = paths.join(self.directory, str(step)), paths.join(self.directory, name)
    if jax.process_index() == 0:
      try:
        paths.replace(source, target)
      except OSError as e:
        raise errors.StorageError(
            f"{source}: damaged (unreadable), and it could not be moved to {target} ({e}); "
            "move or delete it and run the same command again") from e
    return target

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


# tensorstore's status codes for failures to write what is on disk.
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


def _reason(e: BaseException) -> str:
  """One line on why a read failed: the first OSError or tensorstore status in the chain
  (the file or array it names), else the error itself."""
  x = e
  while x is not None:
    text = str(x).strip()
    if isinstance(x, OSError) or orbax_noise.STATUS.match(text):
      break
    x = x.__cause__ or x.__context__
  x = x if x is not None else e
  text = (str(x).strip().splitlines() or [""])[0]
  return f"{type(x).__name__}: {text[:400]}"


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  """{"opt_state/1/0/mu/...": shape} of a state tree, or of orbax's metadata of one (whose
  namedtuples and tuples come back as dicts and lists: keys compare as strings)."""
  def name(k):
    for attr in ("key", "idx", "name"):
      if hasattr(k, attr):
        return str(getattr(k, attr))
    return str(k)
  return {"/".join(name(k) for k in path): tuple(getattr(leaf, "shape", ()) or ())
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _existing_parent(path: str) -> str:
  """The nearest existing directory at or above `path` (what disk_usage can measure)."""
  path = os.path.abspath(path)
  while not os.path.exists(path) and os.path.dirname(path) != path:
    path = os.path.dirname(path)
  return path


