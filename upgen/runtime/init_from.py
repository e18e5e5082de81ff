"""`config.train.init_from=INIT`: a new run starts from parameters trained elsewhere.

INIT is a directory of `upgen import hf` (import.json and init_params/), or a run directory
of the same family (config.json and checkpoints/; its latest checkpoint), for instance an
encoder pretrained with another objective. `config.train.init_groups` (comma-separated
parameter groups of the family, e.g. "encoder"; empty: all) limits what is taken.

Every parameter taken replaces the freshly initialized one of the same name: same shape;
or, for a table with more rows than the model needs (a position table cut to the model's
length), its first rows; or, for a table with fewer rows (a language model's token table
that the run expands with image codes), the first rows of the model's, the rows past them
set by `config.train.init_new_rows`:
  "random"       the fresh init (a normal with the family's scale)
  "mean"         the mean of INIT's rows, in every new row
  "contrastive"  INIT/aligned_params/, written by `upgen align` for these records (the
                 image codes' rows aligned to caption words; docs/dalle.md)
Blocks stored unrolled (layers_0, layers_1, ...) fill a model that scans its layers (one
stacked "layers"). INIT's architecture must be the run's (a mismatch names the key); a
parameter INIT has and the model has not, or a shape that does not fit, is an error naming
it. What is not taken keeps its fresh init.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import re
from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from upgen import errors
from upgen import rundir
from upgen.runtime import checkpoint
from upgen.runtime import param_groups
from upgen.runtime import restore

log = logging.getLogger("upgen.train")
# config.model keys that change how parameters are computed with, not what they are.
IMPLEMENTATION_KEYS = ("attention_impl", "dtype", "param_dtype", "remat", "scan_layers", "size")
NEW_ROWS = ("random", "mean", "contrastive")


def _flat(tree: Any) -> dict[str, Any]:
  return {param_groups.param_path(p): v for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _scan_stacked(source: dict[str, np.ndarray], model_paths: set[str]) -> dict[str, np.ndarray]:
  """Unrolled "X/layers_i/rest" leaves stacked into "X/layers/rest" where the model scans."""
  out, stacks = {}, {}
  for name, value in source.items():
    m = re.match(r"^(.*?/)?layers_(\d+)/(.*)$", name)
    scanned = m and f"{m.group(1) or ''}layers/{m.group(3)}"
    if m and scanned in model_paths and name not in model_paths:
      stacks.setdefault(scanned, {})[int(m.group(2))] = value
    else:
      out[name] = value
  for name, layers in stacks.items():
    out[name] = np.stack([layers[i] for i in range(len(layers))])
  return out


def _is_run(init_dir: str) -> bool:
  return not is_import(init_dir) and \
      os.path.isdir(os.path.join(init_dir, rundir.CHECKPOINT_DIR))


def architecture(init_dir: str) -> dict[str, Any]:
  """The config.model keys INIT's parameters were made for."""
  if _is_run(init_dir):
    config, _ = checkpoint.load_run_config(init_dir)
    return config.model.to_dict()
  path = os.path.join(init_dir, rundir.REPORT_FILE)
  if not os.path.isfile(path):
    raise errors.NotFound(f"{path}: not found; config.train.init_from must name a directory "
                          "written by `upgen import hf` or a run directory with checkpoints/")
  with open(path) as f:
    return json.load(f)["model"]


def check_architecture(init_dir: str, model: ml_collections.ConfigDict) -> None:
  """INIT's architecture (import.json, or the run's config.model; dropout rates aside)
  against the run's config.model: every such key must be the same."""
  source = architecture(init_dir)
  diffs = sorted(k for k, v in source.items()
                 if not k.endswith("dropout_rate") and k not in IMPLEMENTATION_KEYS
                 and model.get(k) != v)
  if diffs:
    k = diffs[0]
    flags = " ".join(f"--config.model.{d}={source[d]}" for d in diffs)
    raise errors.ConfigError(
        f"config.train.init_from={init_dir}: its model has config.model.{k}="
        f"{source[k]!r}, this run {model.get(k)!r}"
        + (f" ({len(diffs) - 1} more keys differ)" if len(diffs) > 1 else "")
        + f"; set {flags} (the weights need their architecture)")


def source_params(init_dir: str, new_rows: str = "random") -> dict[str, np.ndarray]:
  if new_rows not in NEW_ROWS:
    raise errors.ConfigError(f"config.train.init_new_rows={new_rows!r}: choose one of "
                             f"{NEW_ROWS}")
  if _is_run(init_dir):
    _, _, params = restore.restore_params(init_dir)
    source = {name: np.asarray(jax.device_get(v)) for name, v in _flat(params).items()}
  else:
    source = _flat(restore.load_params(init_dir))
  if new_rows == "contrastive":
    aligned = os.path.join(init_dir, rundir.ALIGNED_DIR)
    if not os.path.isdir(aligned):
      raise errors.NotFound(f"{aligned}: not found; config.train.init_new_rows=contrastive "
                            f"reads the rows `upgen align --workdir {init_dir} --data RECORDS` "
                            "writes")
    source.update(_flat(restore.load_params(init_dir, rundir.ALIGNED_DIR)))
  return source


@functools.partial(jax.jit, static_argnames=("mean",), donate_argnums=0)
def _grow(fresh: jax.Array, old: jax.Array, mean: bool) -> jax.Array:
  """`fresh` with its first rows replaced by `old` (and the others by their mean)."""
  n = old.shape[0]
  if mean:
    fresh = fresh.at[n:].set(jnp.mean(old, axis=0).astype(fresh.dtype))
  return fresh.at[:n].set(old.astype(fresh.dtype))


def group_names(groups: str, family_groups: Mapping[str, Sequence[str]]
                ) -> Optional[frozenset[str]]:
  """The parameter patterns of config.train.init_groups (None: take everything)."""
  return param_groups.group_members("config.train.init_groups", groups, family_groups) or None


def apply(params: Any, init_dir: str, take: Optional[set[str]] = None,
          new_rows: str = "random") -> Any:
  """`params` (sharded jax arrays) with INIT's parameters in (only those the parameter
  patterns `take` hold, when given; the rows a smaller table lacks as `new_rows` says); logs what
  came from INIT."""
  target = _flat(params)
  source = _scan_stacked(source_params(init_dir, new_rows), set(target))
  if take is not None:
    source = {n: v for n, v in source.items() if param_groups.member(n, tuple(take)) is not None}
  treedef = jax.tree_util.tree_structure(params)
  out, cut, grown = dict(target), [], []
  for name, value in sorted(source.items()):
    if name not in target:
      raise errors.ConfigError(f"config.train.init_from={init_dir}: it holds {name!r}, which "
                               "this model does not have (another family or architecture?)")
    want = target[name]
    value = np.asarray(value)
    if value.shape != want.shape:
      rows_only = value.ndim == want.ndim and value.shape[1:] == want.shape[1:]
      if rows_only and value.shape[0] > want.shape[0]:
        value = value[:want.shape[0]]
        cut.append(name)
      elif rows_only and value.ndim == 2:
        out[name] = _grow(want, value, mean=new_rows == "mean")
        grown.append(f"{name} ({value.shape[0]} -> {want.shape[0]} rows, {new_rows})")
        continue
      else:
        raise errors.ConfigError(f"config.train.init_from={init_dir}: {name!r} is "
                                 f"{value.shape} there, {tuple(want.shape)} in this model")
    value = value.astype(want.dtype)
    out[name] = jax.make_array_from_callback(want.shape, want.sharding,
                                             lambda index, v=value: v[index])
  log.info("init_from %s: %d of %d parameters (%s); first rows of %s; grown: %s", init_dir,
           len(source), len(target), ", ".join(sorted({n.split("/")[0] for n in source})),
           ", ".join(cut) or "none", ", ".join(grown) or "none")
  return jax.tree_util.tree_unflatten(treedef, [out[name] for name in target])


def is_import(directory: str) -> bool:
  return os.path.isfile(os.path.join(directory, rundir.REPORT_FILE))


