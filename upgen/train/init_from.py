"""`config.train.init_from=INIT`: a new run starts from the parameters an import wrote.

INIT is a directory of `upgen import hf` (its config.json and init_params/). Every parameter
INIT holds replaces the freshly initialized one of the same name: same shape, or, for a
table with more rows than the model needs (a position table cut to the model's length), its
first rows. Blocks stored unrolled (layers_0, layers_1, ...) fill a model that scans its
layers (one stacked "layers"). The architecture in INIT's config.json must be the run's
(a mismatch names the key); a parameter INIT has and the model has not, or a shape that
does not fit, is an error naming it. What INIT does not hold keeps its fresh init.
"""
from __future__ import annotations

import json
import logging
import os
import re
from typing import Any

import jax
import ml_collections
import numpy as np

from upgen import errors
from upgen import hf_import

log = logging.getLogger("upgen.train")


def _path(keys) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in keys)


def _flat(tree: Any) -> dict[str, Any]:
  return {_path(p): v for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


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


def check_architecture(init_dir: str, model: ml_collections.ConfigDict) -> None:
  """The architecture the import read (import.json; dropout rates aside) against the run's
  config.model: every such key must be the same."""
  path = os.path.join(init_dir, hf_import.REPORT_FILE)
  if not os.path.isfile(path):
    raise errors.NotFound(f"{path}: not found; config.train.init_from must name a directory "
                          "written by `upgen import hf`")
  with open(path) as f:
    imported = json.load(f)["model"]
  diffs = sorted(k for k, v in imported.items()
                 if not k.endswith("dropout_rate") and model.get(k) != v)
  if diffs:
    k = diffs[0]
    raise errors.ConfigError(
        f"config.train.init_from={init_dir}: the imported model has config.model.{k}="
        f"{imported[k]!r}, this run {model.get(k)!r}; set --config.model.{k}={imported[k]} "
        "(the imported weights need their architecture)")


def apply(params: Any, init_dir: str) -> Any:
  """`params` (sharded jax arrays) with INIT's parameters in; logs what came from INIT."""
  target = _flat(params)
  source = _scan_stacked(_flat(hf_import.load_params(init_dir)), set(target))
  treedef = jax.tree_util.tree_structure(params)
  out, cut = dict(target), []
  for name, value in sorted(source.items()):
    if name not in target:
      raise errors.ConfigError(f"config.train.init_from={init_dir}: it holds {name!r}, which "
                               "this model does not have (another family or architecture?)")
    want = target[name]
    value = np.asarray(value)
    if value.shape != want.shape:
      if value.ndim == want.ndim and value.shape[1:] == want.shape[1:] and \
          value.shape[0] > want.shape[0]:
        value = value[:want.shape[0]]
        cut.append(name)
      else:
        raise errors.ConfigError(f"config.train.init_from={init_dir}: {name!r} is "
                                 f"{value.shape} there, {tuple(want.shape)} in this model")
    value = value.astype(want.dtype)
    out[name] = jax.make_array_from_callback(want.shape, want.sharding,
                                             lambda index, v=value: v[index])
  log.info("init_from %s: %d of %d parameters (%s); first rows of %s", init_dir, len(source),
           len(target), ", ".join(sorted({n.split("/")[0] for n in source})),
           ", ".join(cut) or "none")
  return jax.tree_util.tree_unflatten(treedef, [out[name] for name in target])
