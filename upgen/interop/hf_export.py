"""`upgen export hf --workdir W --out DIR`: a trained run as a Hugging Face model directory.

For the families that can (`Family.export_hf`; the decoder-only family's "gpt2"
architecture as a GPT2LMHeadModel), DIR gets:
  config.json            transformers' config with the tokenizer's bos_token_id and
                         eos_token_id (an "upgen" entry adds the document token ids and the
                         image codebook's offset where the model has them)
  generation_config.json the same bos_token_id and eos_token_id, so generate() stops at EOS
  flax_model.msgpack     the weights in the Flax layout (FlaxGPT2LMHeadModel.from_pretrained)
  model.safetensors      the same weights in the PyTorch layout (GPT2LMHeadModel)
  tokenizer files        the records' text tokenizer, loadable by transformers.AutoTokenizer
`upgen import hf --from DIR` reads it back (the round trip is tested).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from typing import Any, Mapping, Optional

from flax import serialization
import jax
import numpy as np
from safetensors.numpy import save_file

from upgen import errors
from upgen.data import records
from upgen.runtime import restore
from upgen.tokenizers import text


def _nest(flat: Mapping[str, np.ndarray]) -> dict[str, Any]:
  out: dict[str, Any] = {}
  for name, value in flat.items():
    *parents, leaf = name.split("/")
    node = out
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return out


def pytorch_layout(flat: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Flax names and layouts -> PyTorch state-dict ones: "a/b/kernel" -> "a.b.weight"
  transposed (a Dense kernel (in, out) becomes a Linear weight (out, in); a FlaxConv1D
  kernel (out, in) becomes GPT-2's Conv1D weight (in, out)), "scale" and "embedding" ->
  "weight". upgen/interop/hf_import.py reads it back."""
  out = {}
  for name, value in flat.items():
    parts = name.split("/")
    if parts[-1] == "kernel":
      parts[-1] = "weight"
      value = value.T
    elif parts[-1] in ("scale", "embedding"):
      parts[-1] = "weight"
    out[".".join(parts)] = np.array(value, order="C")  # (ascontiguousarray makes 0-d 1-d.)
  return out


def write_tokenizer(tokenizer: Any, out: str) -> list[str]:
  """The text tokenizer as files transformers.AutoTokenizer loads; returns their names."""
  if isinstance(tokenizer, text.HFTokenizer):
    names = [os.path.basename(f) for f in tokenizer.files]
    for f in tokenizer.files:
      shutil.copy(f, os.path.join(out, os.path.basename(f)))
    return names
  shutil.copy(tokenizer.files[0], os.path.join(out, text.TOKENIZER_FILE))
  specials = dict(zip(("pad_token", "mask_token", "unk_token", "bos_token", "eos_token"),
                      text.SPECIAL_TOKENS))
  with open(os.path.join(out, text.HF_CONFIG_FILE), "w") as f:
    json.dump({"tokenizer_class": "PreTrainedTokenizerFast", **specials,
               "model_max_length": 1_000_000_000}, f, indent=2)
  return [text.TOKENIZER_FILE, text.HF_CONFIG_FILE]


def special_ids(tokenizer: Any) -> dict[str, Optional[int]]:
  """The tokenizer's BOS and EOS ids as config.json names them (null where it has none:
  left out, transformers' GPT2Config would assume 50256, and generate() would never stop)."""
  as_id = lambda i: None if i is None else int(i)
  return {"bos_token_id": as_id(tokenizer.bos_id), "eos_token_id": as_id(tokenizer.eos_id)}


def write_model(out: str, hf_config: Mapping[str, Any], flat: Mapping[str, np.ndarray],
                tokenizer: Any) -> list[str]:
  """DIR's files (the module docstring) in the existing, empty or absent `out`; returns the
  tokenizer's file names. config.json and generation_config.json carry the tokenizer's
  BOS and EOS ids."""
  if os.path.exists(out) and os.listdir(out):
    raise errors.ConfigError(f"--out {out}: exists and is not empty; choose a new directory")
  os.makedirs(out, exist_ok=True)
  ids = special_ids(tokenizer)
  with open(os.path.join(out, "config.json"), "w") as f:
    json.dump({**hf_config, **ids}, f, indent=2, sort_keys=True)
  with open(os.path.join(out, "generation_config.json"), "w") as f:
    json.dump({"_from_model_config": True, **ids}, f, indent=2, sort_keys=True)
  with open(os.path.join(out, "flax_model.msgpack"), "wb") as f:
    f.write(serialization.msgpack_serialize(_nest(flat)))
  save_file(pytorch_layout(flat), os.path.join(out, "model.safetensors"),
            metadata={"format": "pt"})
  return write_tokenizer(tokenizer, out)


def export_hf(workdir: str, out: str) -> dict[str, Any]:
  config, setup, params = restore.restore_params(workdir)
  export = setup.family.can("export_hf")
  hf_config, flat = export(jax.device_get(params), setup.model_config)
  meta = records.read_metadata(config.data.dir)
  tok = text.load_recorded(config.data.dir, meta)
  files = write_model(out, hf_config, flat, tok)
  return {"workdir": workdir, "out": out, "family": setup.family.name,
          "parameters": len(flat), "tokenizer": files, "vocab_size": hf_config["vocab_size"]}


def main(argv: Optional[list[str]] = None) -> int:
  parser = errors.ArgumentParser(prog="upgen export hf", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", required=True, help="Run directory of `upgen train`.")
  parser.add_argument("--out", required=True, help="Hugging Face directory to write.")
  args = parser.parse_args(argv)
  print(json.dumps(export_hf(args.workdir, args.out)))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
