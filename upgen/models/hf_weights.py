"""A local Hugging Face model directory's weights and config, read without pickle.

`read_weights` takes `flax_model.msgpack` or `model.safetensors` (or its shards) in either
layout transformers writes and returns every tensor by "a/b/c" name in the Flax layout; a
family's `import_hf` (models/*_hf.py) maps them onto its parameters through a
`WeightReader` and returns an `HFImport`. `upgen import hf` (interop/hf_import.py) writes
the result as an INIT directory.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

from flax import serialization
import numpy as np
from safetensors import safe_open

from upgen import errors

PICKLES = ("pytorch_model.bin", "tf_model.h5", "model.ckpt.index")


@dataclasses.dataclass
class HFImport:
  """What a family makes of an HF model: config.model values, parameters, notes."""
  model: dict[str, Any]
  params: dict[str, Any]  # Nested, numpy leaves, the family's own names and shapes.
  notes: list[str] = dataclasses.field(default_factory=list)
  # Sizes the weights were made for that records decide in a run (e.g. a CLIP's image
  # size), for using the import as it is (import.json "data").
  data: dict[str, Any] = dataclasses.field(default_factory=dict)


class WeightReader:
  """An import's weights by "a/b/c" name (`prefix` stripped where present), float32, with
  what was read kept track of for the report."""

  def __init__(self, weights: Mapping[str, Any], what: str, prefix: str = ""):
    self.weights = {k[len(prefix):] if prefix and k.startswith(prefix) else k: v
                    for k, v in weights.items()}
    self.what, self.used = what, set()

  def __contains__(self, name: str) -> bool:
    return name in self.weights

  def __call__(self, name: str) -> np.ndarray:
    if name not in self.weights:
      raise errors.DataError(f"the weights have no {name!r} (is this a {self.what} "
                             "checkpoint?)")
    self.used.add(name)
    return np.asarray(self.weights[name], np.float32)

  def unused(self) -> list[str]:
    return sorted(set(self.weights) - self.used)


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
  out = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, Mapping):
      out.update(flatten(value, name + "/"))
    else:
      out[name] = np.asarray(value)
  return out


def _from_pytorch_names(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """PyTorch state-dict names and layouts -> Flax ones: "a.0.b.weight" -> "a/0/b/kernel"
  with (out, in) transposed to (in, out) for Linear weights; "embedding" for embedding
  tables (names with "embed" or "shared"), "scale" for 1-D (LayerNorm) weights."""
  out = {}
  for name, value in tensors.items():
    parts = name.split(".")
    if parts[-1] == "weight":
      if value.ndim == 1:
        parts[-1] = "scale"
      elif any("embed" in p or p == "shared" or p == "wte" or p == "wpe" for p in parts[:-1]):
        parts[-1] = "embedding"
      else:
        parts[-1] = "kernel"
        value = value.T
    out["/".join(parts)] = value
  return out


def read_weights(directory: str) -> tuple[dict[str, np.ndarray], str]:
  """(weights by "a/b/c" in the Flax layout, a description of the file and layout read)."""
  msgpack = os.path.join(directory, "flax_model.msgpack")
  single = os.path.join(directory, "model.safetensors")
  index = os.path.join(directory, "model.safetensors.index.json")
  if os.path.isfile(msgpack):
    with open(msgpack, "rb") as f:
      try:
        tree = serialization.msgpack_restore(f.read())
      except Exception as e:  # msgpack raises its own types for truncated / foreign bytes.
        raise errors.DataError(f"{msgpack}: not a Flax msgpack checkpoint ({e})") from e
    return flatten(tree), f"{msgpack} (Flax msgpack)"
  files = [single] if os.path.isfile(single) else []
  if not files and os.path.isfile(index):
    with open(index) as f:
      shards = sorted(set(json.load(f).get("weight_map", {}).values()))
    files = [os.path.join(directory, s) for s in shards]
  if not files:
    pickles = [p for p in PICKLES if os.path.exists(os.path.join(directory, p))]
    raise errors.NotFound(
        f"{directory}: no flax_model.msgpack or model.safetensors"
        + (f" (only {', '.join(pickles)}: pickled weights are not read, as a pickle can run "
           "code; convert them to safetensors with transformers first)" if pickles else ""))
  tensors, layouts = {}, set()
  for path in files:
    try:
      with safe_open(path, framework="numpy") as f:
        layouts.add((f.metadata() or {}).get("format", "pt"))
        tensors.update({k: f.get_tensor(k) for k in f.keys()})
    except Exception as e:  # safetensors raises SafetensorError for malformed headers.
      raise errors.DataError(f"{path}: not a readable safetensors file ({e})") from e
  if len(layouts) > 1:
    raise errors.DataError(f"{directory}: safetensors shards mix layouts {sorted(layouts)}")
  layout = layouts.pop()
  if layout == "flax":
    return {k.replace(".", "/"): v for k, v in tensors.items()}, \
        f"{', '.join(files)} (safetensors, Flax layout)"
  return _from_pytorch_names(tensors), f"{', '.join(files)} (safetensors, PyTorch layout)"


def read_config(directory: str) -> dict[str, Any]:
  path = os.path.join(directory, "config.json")
  if not os.path.isfile(path):
    raise errors.NotFound(f"{path}: not found (is {directory} a Hugging Face model directory?)")
  try:
    with open(path) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise errors.DataError(f"{path}: not valid JSON ({e})") from e

