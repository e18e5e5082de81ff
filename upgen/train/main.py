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
import re
import signal
import sys
from typing import Optional

from absl import flags
from ml_collections import config_flags

import upgen
from upgen import errors
from upgen.runtime import distributed
from upgen.train import periodic
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
  for i, a in enumerate(argv):
    value = a[len("--config="):] if a.startswith("--config=") else (
        argv[i + 1] if a == "--config" and i + 1 < len(argv) else None)
    if value is not None and not os.path.isfile(value.partition(":")[0]):
      raise errors.NotFound(f"--config {value}: no such config file (the configs are "
                            "configs/<family>.py, with a variant after ':')")
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
  """A locked config rejects a key it does not have: name the override that did it, with
  ml_collections' suggestion when it has one."""
  overrides = [a.split("=", 1)[0] for a in argv if a.startswith("--config.")]
  hint = re.search(r'Did you mean "([^"]+)"', "".join(
      str(e.args[0]) for e in _chain(error) if e.args))
  while isinstance(error.__cause__ or error.__context__, (AttributeError, KeyError)):
    error = error.__cause__ or error.__context__  # The innermost names the key alone.
  key = str(error.args[0] if error.args else error)
  named = [o for o in overrides if o.split(".")[-1] == key]
  where = named[0] if named else f"--config.*.{key}"
  return (f"{where}: no such config key"
          + (f" (did you mean {hint.group(1)!r}?)" if hint else "")
          + "; configs are locked, so an override names an existing key")


def _chain(error: BaseException):
  """error and the exceptions it was raised from or during, outermost first."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    yield error
    error = error.__cause__ or error.__context__


def user_error(error: BaseException) -> Optional[errors.UserError]:
  """The upgen error a config file raised (an unknown variant, say) that absl's flag
  parsing wrapped in a message holding its traceback: the innermost, whose message is its
  own."""
  found = [e for e in _chain(error) if isinstance(e, errors.UserError)]
  return found[-1] if found else None


def main(argv: list[str]) -> int:
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                      stream=sys.stderr)
  logging.getLogger("absl").setLevel(logging.WARNING)  # orbax logs every save step at INFO.
  logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)  # "no TPU" on CPU/GPU.
  try:
    fv = parse(argv)
    distributed.initialize(**distributed.flag_values(fv))  # Before any jax backend exists.
  except errors.UserError as e:
    raise user_error(e) from e
  except (flags.Error, ValueError) as e:
    raise (user_error(e) or errors.ConfigError(str(e))) from e
  except (AttributeError, KeyError) as e:
    raise errors.ConfigError(override_error(argv, e)) from e
  try:
    with periodic.terminate_raises():
      summary = trainer.train(fv.config, fv.workdir)
  except periodic.Terminated:
    print(f"upgen train: stopped by SIGTERM outside the training loop (starting up, or after "
          f"its last checkpoint); the checkpoints in {fv.workdir} are as they were: run the "
          "same command to resume", file=sys.stderr)
    return 128 + signal.SIGTERM
  print(f"upgen train: {summary['stopped']} at step {summary['step']} "
        f"({summary['num_params']:,} parameters, {summary['seconds']:.0f} s)")
  return 0
