"""`upgen import hf --from DIR --family F --out INIT`: a local Hugging Face model directory
as an upgen INIT run directory, for `--config.train.init_from=INIT`.

DIR holds config.json and the weights as `flax_model.msgpack`, or as `model.safetensors`
(or its shards, `model.safetensors.index.json`) in either layout transformers writes: the
PyTorch one (`format: pt` in the file's metadata: dotted names, Linear weights (out, in)) or
the Flax one (`format: flax`). Pickled PyTorch files (`pytorch_model.bin`) are refused: a
pickle can run code. The family maps the weights onto its parameters (`Family.import_hf`)
as transformers computes with them, or refuses in one line naming the field or tensor
(every tensor's shape is checked against what config.json implies); a refused import writes
nothing.

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
import importlib
import json
import os
import shutil
import sys
import tempfile
from typing import Optional

from upgen import errors
from upgen import families
from upgen import rundir
from upgen.models import hf_weights
from upgen.runtime import restore
from upgen.tokenizers import text


def import_hf(directory: str, family_name: str, out: str) -> hf_weights.HFImport:
  """Writes the INIT run directory `out` (see the module docstring); returns the import.
  Nothing is written when the family refuses the model."""
  family = families.get_family(family_name)
  if family.import_hf is None:
    raise errors.ConfigError(f"--family {family_name}: this family imports no Hugging Face "
                             "model (families that do: "
                             f"{', '.join(n for n in families.names() if families.get_family(n).import_hf)})")
  hf_config = hf_weights.read_config(directory)
  weights, source = hf_weights.read_weights(directory)
  tokenizer_files = [n for n in os.listdir(directory)
                     if n.startswith(("tokenizer", "special_tokens", "vocab", "merges",
                                      "added_tokens", "spiece", "sentencepiece"))]
  with tempfile.TemporaryDirectory() as staging:
    tokenizer = None
    if tokenizer_files:  # Loaded from the files INIT/tokenizer will hold, and nothing else.
      for name in tokenizer_files + ["config.json"]:
        shutil.copy(os.path.join(directory, name), os.path.join(staging, name))
      tokenizer = text.load(staging)
    result = family.import_hf(hf_config, weights, tokenizer=tokenizer)
    config = importlib.import_module(f"configs.{family_name}").get_config("base")
    for key, value in result.model.items():
      if key not in config.model:
        raise errors.ConfigError(f"configs/{family_name}.py has no config.model.{key}")
      config.model[key] = value
    os.makedirs(out, exist_ok=True)
    if tokenizer_files:
      shutil.copytree(staging, os.path.join(out, rundir.TOKENIZER_DIR), dirs_exist_ok=True)
  with open(os.path.join(out, rundir.CONFIG_FILE), "w") as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True))
  restore.save_params(os.path.join(out, rundir.PARAMS_DIR), result.params)
  with open(os.path.join(out, rundir.REPORT_FILE), "w") as f:
    json.dump({"source": source, "family": family_name, "model": result.model,
               "data": result.data,
               "parameters": sorted(hf_weights.flatten(result.params)), "notes": result.notes,
               "tokenizer": sorted(tokenizer_files)}, f, indent=1)
  return result


def main(argv: Optional[list[str]] = None) -> int:
  parser = errors.ArgumentParser(prog="upgen import hf", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--from", dest="source", required=True,
                      help="Local Hugging Face model directory (config.json + weights).")
  parser.add_argument("--family", required=True, help="Family to import into (e.g. bart).")
  parser.add_argument("--out", required=True, help="INIT run directory to write.")
  args = parser.parse_args(argv)
  result = import_hf(args.source, args.family, args.out)
  print(f"upgen import hf: {len(hf_weights.flatten(result.params))} parameters from "
        f"{args.source} -> {args.out}")
  for note in result.notes:
    print(f"  {note}")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
