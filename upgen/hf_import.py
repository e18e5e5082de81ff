"""`upgen import hf --from DIR --family F --out INIT`: a local Hugging Face model directory
as an upgen INIT run directory, for `--config.train.init_from=INIT`.

DIR holds config.json and the weights as `flax_model.msgpack`, or as `model.safetensors`
(or its shards, `model.safetensors.index.json`) in either layout transformers writes: the
PyTorch one (`format: pt` in the file's metadata: dotted names, Linear weights (out, in)) or
the Flax one (`format: flax`). Pickled PyTorch files (`pytorch_model.bin`) are refused: a
pickle can run code. The family maps the weights onto its parameters (`Family.import_hf`).

INIT (a directory):
  config.json       the family's configs/<family>.py "base" config with config.model as read
                    from the HF config (`upgen train` checks its own config.model against it)
  init_params/      orbax: the parameters the HF model supplies (a partial tree; what the
                    data decides, such as the image embeddings and head, is not there)
  tokenizer/        the directory's tokenizer files: `upgen tokenize --text-tokenizer
                    INIT/tokenizer` writes records the imported encoder reads
  import.json       the source, the layout, and every parameter mapped, padded or skipped
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import shutil
import sys
from typing import Any, Mapping, Optional

import numpy as np

from upgen import errors
from upgen import families

PARAMS_DIR = "init_params"
TOKENIZER_DIR = "tokenizer"
REPORT_FILE = "import.json"
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


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
  out = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, Mapping):
      out.update(_flatten(value, name + "/"))
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
    from flax import serialization
    with open(msgpack, "rb") as f:
      try:
        tree = serialization.msgpack_restore(f.read())
      except Exception as e:  # msgpack raises its own types for truncated / foreign bytes.
        raise errors.DataError(f"{msgpack}: not a Flax msgpack checkpoint ({e})") from e
    return _flatten(tree), f"{msgpack} (Flax msgpack)"
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
  from safetensors import safe_open
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


def import_hf(directory: str, family_name: str, out: str) -> HFImport:
  """Writes the INIT run directory `out` (see the module docstring); returns the import."""
  family = families.get_family(family_name)
  if family.import_hf is None:
    raise errors.ConfigError(f"--family {family_name}: this family imports no Hugging Face "
                             "model (families that do: "
                             f"{', '.join(n for n in families.names() if families.get_family(n).import_hf)})")
  hf_config = read_config(directory)
  weights, source = read_weights(directory)
  os.makedirs(out, exist_ok=True)
  tokenizer_files = [n for n in os.listdir(directory)
                     if n.startswith(("tokenizer", "special_tokens", "vocab", "merges",
                                      "added_tokens", "spiece", "sentencepiece"))]
  text_vocab_size = None
  if tokenizer_files:
    os.makedirs(os.path.join(out, TOKENIZER_DIR), exist_ok=True)
    for name in tokenizer_files:
      shutil.copy(os.path.join(directory, name), os.path.join(out, TOKENIZER_DIR, name))
    shutil.copy(os.path.join(directory, "config.json"),
                os.path.join(out, TOKENIZER_DIR, "config.json"))
    from upgen.tokenizers import text
    text_vocab_size = text.load(os.path.join(out, TOKENIZER_DIR)).vocab_size
  result = family.import_hf(hf_config, weights, text_vocab_size=text_vocab_size)
  config = importlib.import_module(f"configs.{family_name}").get_config("base")
  for key, value in result.model.items():
    if key not in config.model:
      raise errors.ConfigError(f"configs/{family_name}.py has no config.model.{key}")
    config.model[key] = value
  from upgen.train import checkpoint
  with open(os.path.join(out, checkpoint.CONFIG_FILE), "w") as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True))
  save_params(os.path.join(out, PARAMS_DIR), result.params)
  with open(os.path.join(out, REPORT_FILE), "w") as f:
    json.dump({"source": source, "family": family_name, "model": result.model,
               "data": result.data,
               "parameters": sorted(_flatten(result.params)), "notes": result.notes,
               "tokenizer": sorted(tokenizer_files)}, f, indent=1)
  return result


def save_params(path: str, params: Mapping[str, Any]) -> None:
  import orbax.checkpoint as ocp
  path = os.path.abspath(path)
  if os.path.exists(path):
    shutil.rmtree(path)
  with ocp.StandardCheckpointer() as ckpt:
    ckpt.save(path, params)


def load_params(init_dir: str, sub: str = PARAMS_DIR) -> dict[str, Any]:
  """The parameter tree an import (or `upgen align`) wrote (numpy leaves)."""
  import orbax.checkpoint as ocp
  path = os.path.abspath(os.path.join(init_dir, sub))
  if not os.path.isdir(path):
    raise errors.NotFound(f"{path}: not found; config.train.init_from must name a directory "
                          "written by `upgen import hf`")
  with ocp.StandardCheckpointer() as ckpt:
    return ckpt.restore(path)


def main(argv: Optional[list[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog="upgen import hf", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--from", dest="source", required=True,
                      help="Local Hugging Face model directory (config.json + weights).")
  parser.add_argument("--family", required=True, help="Family to import into (e.g. bart).")
  parser.add_argument("--out", required=True, help="INIT run directory to write.")
  args = parser.parse_args(argv)
  result = import_hf(args.source, args.family, args.out)
  print(f"upgen import hf: {len(_flatten(result.params))} parameters from {args.source} -> "
        f"{args.out}")
  for note in result.notes:
    print(f"  {note}")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
