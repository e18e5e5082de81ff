"""A transformers Flax model saved the ways `upgen import hf` reads: Flax msgpack, Flax
safetensors, and PyTorch-layout safetensors (written here from the Flax weights as
transformers' PyTorch state dict names and lays them out: transformers needs torch to write
it itself)."""
import os

import jax
import numpy as np
from safetensors.numpy import save_file

from upgen.interop import hf_export

LAYOUTS = ("msgpack", "flax_safetensors", "pt_safetensors")


def flat(params, prefix=""):
  return {prefix + "/".join(str(k.key) for k in path): np.asarray(v)
          for path, v in jax.tree_util.tree_flatten_with_path(params)[0]}


def save(model, root, prefix="", extra=None, layouts=LAYOUTS):
  """{layout: directory} under `root`. `prefix` starts every PyTorch name ("model/" for
  BART's); `extra(pt)` may add or change PyTorch-layout entries (tied copies, conv
  weights)."""
  dirs = {}
  if "msgpack" in layouts:
    dirs["msgpack"] = root / "msgpack"
    model.save_pretrained(dirs["msgpack"])
  if "flax_safetensors" in layouts:
    dirs["flax_safetensors"] = root / "flax_st"
    model.save_pretrained(dirs["flax_safetensors"], safe_serialization=True)
  if "pt_safetensors" in layouts:
    d = dirs["pt_safetensors"] = root / "pt_st"
    os.makedirs(d)
    model.config.to_json_file(str(d / "config.json"))
    pt = hf_export.pytorch_layout(flat(model.params, prefix))
    if extra is not None:
      extra(pt)
    save_file(pt, str(d / "model.safetensors"), metadata={"format": "pt"})
  return dirs
