"""`upgen train --config configs/<family>.py:<variant> --workdir W [--config.KEY=VALUE ...]`.

Configs are ml_collections files with get_config(arg), locked: a misspelt override is an
error. Re-running the same command resumes from the newest checkpoint in W.
"""
from __future__ import annotations

import logging
import os
import sys

from absl import flags
from ml_collections import config_flags

import upgen


def config_path(path_and_arg: str) -> str:
  """Finds `configs/x.py[:arg]` relative to the cwd, else to the upgen source tree."""
  path, sep, arg = path_and_arg.partition(":")
  if not os.path.exists(path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(upgen.__file__)))
    candidate = os.path.join(root, path)
    if os.path.exists(candidate):
      path = candidate
  return path + sep + arg


def parse(argv: list[str], extra_flags=None) -> flags.FlagValues:
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "Config file (configs/<family>.py:<variant>).",
                                  flag_values=fv, lock_config=True)
  flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics, config).",
                      flag_values=fv)
  if extra_flags:
    extra_flags(fv)
  argv = [a if not a.startswith("--config=") else "--config=" + config_path(a[len("--config="):])
          for a in argv]
  if "--config" in argv:
    i = argv.index("--config")
    if i + 1 < len(argv):
      argv[i + 1] = config_path(argv[i + 1])
  fv(["upgen train"] + argv)
  if fv.config is None or fv.workdir is None:
    raise SystemExit("upgen train: --config and --workdir are required")
  return fv


def main(argv: list[str]) -> int:
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                      stream=sys.stderr)
  logging.getLogger("absl").setLevel(logging.WARNING)  # orbax logs every save step at INFO.
  try:
    fv = parse(argv)
  except flags.Error as e:
    print(f"upgen train: {e}", file=sys.stderr)
    return 2
  from upgen.train import trainer
  summary = trainer.train(fv.config, fv.workdir)
  print(f"upgen train: {summary['stopped']} at step {summary['step']} "
        f"({summary['num_params']:,} parameters, {summary['seconds']:.0f} s)")
  return 0
