"""`upgen train --config configs/<family>.py:<variant> --workdir W [--config.KEY=VALUE ...]`.

Configs are ml_collections files with get_config(arg), locked: a misspelt override is an
error. Re-running the same command resumes from the newest checkpoint in W.

Many processes (docs/scaling.md): every process runs the same command; on TPU VM slices,
under SLURM and under mpirun they find each other by themselves, elsewhere add
`--coordinator_address=HOST:PORT --num_processes=N --process_id=I`.
"""
from __future__ import annotations

import logging
import os
import sys

from absl import flags
from ml_collections import config_flags

import upgen
from upgen import errors
from upgen.runtime import distributed
from upgen.train import trainer


def config_path(path_and_arg: str) -> str:
  """Finds `configs/x.py[:arg]` relative to the cwd, else to the upgen source tree."""
  path, sep, arg = path_and_arg.partition(":")
  if not os.path.exists(path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(upgen.__file__)))
    candidate = os.path.join(root, path)
    if os.path.exists(candidate):
      path = candidate
  return path + sep + arg


def config_flags_for(argv: list[str], prog: str) -> tuple[flags.FlagValues, list[str]]:
  """FlagValues holding --config (configs/x.py[:arg], found as `config_path` does, locked,
  with --config.KEY=V overrides read from `argv`), and argv with the config path resolved."""
  argv = [a if not a.startswith("--config=") else "--config=" + config_path(a[len("--config="):])
          for a in argv]
  if "--config" in argv:
    i = argv.index("--config")
    if i + 1 < len(argv):
      argv[i + 1] = config_path(argv[i + 1])
  fv = flags.FlagValues()
  # sys_argv: overrides (--config.KEY=V) are read from argv, not from the process's sys.argv.
  config_flags.DEFINE_config_file("config", None, "Config file (configs/<family>.py:<variant>).",
                                  flag_values=fv, lock_config=True, sys_argv=[prog] + argv)
  return fv, argv


def parse(argv: list[str], extra_flags=None) -> flags.FlagValues:
  fv, argv = config_flags_for(argv, "upgen train")
  flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics, config).",
                      flag_values=fv)
  distributed.define_flags(fv)
  if extra_flags:
    extra_flags(fv)
  fv(["upgen train"] + argv)
  if fv.config is None or fv.workdir is None:
    raise errors.ConfigError("--config and --workdir are required")
  return fv


def override_error(argv: list[str], error: Exception) -> str:
  """A locked config rejects a key it does not have; name the override that did it."""
  overrides = [a.split("=", 1)[0] for a in argv if a.startswith("--config.")]
  key = str(error.args[0] if error.args else error).strip("'\"")
  return (f"no config key {key!r} (misspelt override? configs are locked); overrides given: "
          f"{' '.join(overrides) or 'none'}")


def main(argv: list[str]) -> int:
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                      stream=sys.stderr)
  logging.getLogger("absl").setLevel(logging.WARNING)  # orbax logs every save step at INFO.
  logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)  # "no TPU" on CPU/GPU.
  try:
    fv = parse(argv)
    distributed.initialize(**distributed.flag_values(fv))  # Before any jax backend exists.
  except errors.UserError:
    raise
  except (flags.Error, ValueError) as e:
    raise errors.ConfigError(str(e)) from e
  except (AttributeError, KeyError) as e:
    raise errors.ConfigError(override_error(argv, e)) from e
  summary = trainer.train(fv.config, fv.workdir)
  print(f"upgen train: {summary['stopped']} at step {summary['step']} "
        f"({summary['num_params']:,} parameters, {summary['seconds']:.0f} s)")
  return 0
