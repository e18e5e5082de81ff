"""A local Hugging Face model directory's weights and config, read without pickle.

`read_weights` takes `flax_model.msgpack` or `model.safetensors` (or its shards) in either
layout transformers writes and returns every tensor by "a/b/c" name in the Flax layout,
each with the file and name it came from; a family's `import_hf` (models/*_hf.py) maps them
onto its parameters through a `WeightReader`, which checks every tensor it hands out
against the shape the config implies (an error names the file, the tensor as the file names
it, and both shapes as the file lays them out), and returns an `HFImport`. `upgen import
hf` (interop/hf_import.py) writes the result as an INIT directory.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping, Optional, Sequence

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


@dataclasses.dataclass(frozen=True)
class Tensor:
  """One tensor of a checkpoint, in the Flax layout, and where it came from."""
  value: np.ndarray
  file: str
  name: str  # As the file names it ("transformer.h.0.attn.c_proj.weight").
  to_file: Optional[tuple[int, ...]] = None  # Axes taking the Flax layout to the file's.

  def file_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
    """A shape in the Flax layout as the file lays it out."""
    shape = tuple(int(d) for d in shape)
    if self.to_file is None or len(shape) != len(self.to_file):
      return shape
    return tuple(shape[a] for a in self.to_file)


class WeightReader:
  """An import's weights by "a/b/c" name (`prefix` stripped where present), float32, each
  checked against the shape the config implies, with what was read kept track of for the
  report."""

  def __init__(self, weights: Mapping[str, Tensor], what: str, prefix: str = ""):
    self.weights = {k[len(prefix):] if prefix and k.startswith(prefix) else k: v
                    for k, v in weights.items()}
    self.what, self.used = what, set()

  def __contains__(self, name: str) -> bool:
    return name in self.weights

  def __call__(self, name: str, shape: Sequence[int]) -> np.ndarray:
    """The tensor `name` (Flax layout), which must have `shape` (Flax layout)."""
    if name not in self.weights:
      files = sorted({t.file for t in self.weights.values()})
      raise errors.DataError(f"{', '.join(files)}: no tensor {name!r} (is this a {self.what} "
                             "checkpoint?)")
    tensor = self.weights[name]
    if tuple(tensor.value.shape) != tuple(int(d) for d in shape):
      config = os.path.join(os.path.dirname(tensor.file), "config.json")
      raise errors.DataError(f"{tensor.file}: {tensor.name} has shape "
                             f"{tensor.file_shape(tensor.value.shape)}, but {config} implies "
                             f"{tensor.file_shape(shape)}")
    self.used.add(name)
    return np.asarray(tensor.value, np.float32)

  def unused(self) -> list[str]:
    return sorted(set(self.weights) - self.used)


class HFConfig(dict):
  """config.json as a dict, with the path it was read from (for errors)."""
  path: str = "config.json"


def field(hf: Mapping[str, Any], key: str, what: str) -> int:
  """The positive integer config.json field `key` (`what` it is, for the error), which the
  import cannot do without (transformers would fall back to its own default)."""
  where = getattr(hf, "path", "config.json")
  if key not in hf:
    raise errors.ConfigError(f"{where}: no {key} ({what}); the import reads the model's "
                             "sizes from its config")
  value = hf[key]
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise errors.ConfigError(f"{where}: {key}={value!r} ({what}); expected a positive integer")
  return value


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
  out = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, Mapping):
      out.update(flatten(value, name + "/"))
    else:
      out[name] = np.asarray(value)
  return out


def _from_pytorch_names(tensors: Mapping[str, np.ndarray], file: str) -> dict[str, Tensor]:
  """PyTorch state-dict names and layouts -> Flax ones: "a.0.b.weight" -> "a/0/b/kernel"
  with (out, in) transposed to (in, out) for Linear weights and (out, in, h, w) to (h, w,
  in, out) for Conv2d ones; "embedding" for embedding tables (names with "embed" or
  "shared"), "scale" for 1-D (LayerNorm) weights."""
  out = {}
  for name, value in tensors.items():
    parts, to_file = name.split("."), None
    if parts[-1] == "weight":
      if value.ndim == 1:
        parts[-1] = "scale"
      elif value.ndim == 4:
        parts[-1], to_file = "kernel", (3, 2, 0, 1)
        value = np.transpose(value, (2, 3, 1, 0))
      elif any("embed" in p or p == "shared" or p == "wte" or p == "wpe" for p in parts[:-1]):
        parts[-1] = "embedding"
      else:
        parts[-1], to_file = "kernel", tuple(reversed(range(value.ndim)))
        value = value.T
    out["/".join(parts)] = Tensor(value, file, name, to_file)
  return out


def read_weights(directory: str) -> tuple[dict[str, Tensor], str]:
  """(tensors by "a/b/c" in the Flax layout, a description of the files and layout read)."""
  msgpack = os.path.join(directory, "flax_model.msgpack")
  single = os.path.join(directory, "model.safetensors")
  index = os.path.join(directory, "model.safetensors.index.json")
  if os.path.isfile(msgpack):
    with open(msgpack, "rb") as f:
      try:
        tree = serialization.msgpack_restore(f.read())
      except Exception as e:  # msgpack raises its own types for truncated / foreign bytes.
        raise errors.DataError(f"{msgpack}: not a Flax msgpack checkpoint ({e})") from e
    return ({name: Tensor(value, msgpack, name) for name, value in flatten(tree).items()},
            f"{msgpack} (Flax msgpack)")
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
        layout = (f.metadata() or {}).get("format", "pt")
        layouts.add(layout)
        found = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises SafetensorError for malformed headers.
      raise errors.DataError(f"{path}: not a readable safetensors file ({e})") from e
    if layout == "flax":
      tensors.update({k.replace(".", "/"): Tensor(v, path, k) for k, v in found.items()})
    else:
      tensors.update(_from_pytorch_names(found, path))
  if len(layouts) > 1:
    raise errors.DataError(f"{directory}: safetensors shards mix layouts {sorted(layouts)}")
  layout = "Flax layout" if layouts.pop() == "flax" else "PyTorch layout"
  return tensors, f"{', '.join(files)} (safetensors, {layout})"


def read_config(directory: str) -> HFConfig:
  path = os.path.join(directory, "config.json")
  if not os.path.isfile(path):
    raise errors.NotFound(f"{path}: not found (is {directory} a Hugging Face model directory?)")
  try:
    with open(path) as f:
      data = json.load(f)
  except json.JSONDecodeError as e:
    raise errors.DataError(f"{path}: not valid JSON ({e})") from e
  if not isinstance(data, dict):
    raise errors.DataError(f"{path}: not a JSON object")
  config = HFConfig(data)
  config.path = path
  return config
