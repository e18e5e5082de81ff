"""Evaluators by name, as families are found by name (big_vision's evaluators/). A module
upgen/evaluators/NAME.py is an evaluator through what it exports:

  evaluator(settings, context) -> None | (train state -> {metric: float})   in training
  main(argv) -> int                                                        `upgen eval NAME`

In training, every entry of config.evals names its module by `type`; its other keys are the
module's settings:

  config.evals.text = ml_collections.ConfigDict(dict(type="text_ppl", text="held_out.txt"))
  config.evals.samples.scorer = "/runs/clip"  # CLIP score + FID of samples (samples.py)

`evaluator` is called once, before training, and returns None when its settings leave it
off (a text_ppl entry with an empty `text`: a config can hold the entry, and
`--config.evals.NAME.text=FILE` turns it on). The trainer runs what it returns every
config.train.eval_every steps and at the end, logging ENTRY/metric. The validation loss
(val_loss.py) is one more evaluator, built for every run, whose metrics keep the names they
have always had (val_loss, val_ema_loss, ...).

`upgen eval NAME [ARGS]` runs NAME's `main` (a dash in NAME reads as an underscore:
`upgen eval text-ppl`).
"""
from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from typing import Any, Callable

import ml_collections

from upgen import errors
from upgen import families

# The built-in entry: the validation loss, whose metrics are not prefixed with its name.
VAL_LOSS = "val_loss"

Evaluator = Callable[[Any], dict[str, float]]  # Train state -> {metric: value}.


@dataclasses.dataclass(frozen=True)
class Context:
  """What an evaluator may use of the run being trained."""
  config: ml_collections.ConfigDict
  setup: families.Setup
  mesh: Any
  batch_sharding: Any  # Global batches: rows over the mesh's data axes.
  rows: Any  # This process's rows of each global batch (mesh.process_rows).
  total_steps: Callable[[], int]  # The run's steps (config.train.fit_to_time may change it).


def sampled_params(state: Any) -> Any:
  """What samplers and sample-based evaluators use: the EMA where the run keeps one."""
  return state.params if state.ema_params is None else state.ema_params


def names(what: str) -> list[str]:
  """The modules under upgen/evaluators/ that export `what` ("evaluator" or "main")."""
  package = importlib.import_module("upgen.evaluators")  # Found by name, as families are.
  return sorted(info.name for info in pkgutil.iter_modules(package.__path__)
                if info.name != "registry" and hasattr(
                    importlib.import_module(f"upgen.evaluators.{info.name}"), what))


def entry(name: str, what: str, where: str) -> Callable[..., Any]:
  """`what` of the evaluator module `name`, or an error naming `where` the name came from."""
  try:
    module = importlib.import_module(f"upgen.evaluators.{name}")
  except ModuleNotFoundError as e:
    if e.name != f"upgen.evaluators.{name}":
      raise
    module = None
  fn = getattr(module, what, None)
  if fn is None:
    known = [n.replace("_", "-") if what == "main" else n for n in names(what)]
    raise errors.ConfigError(f"{where + ': ' if where else ''}no evaluator {name!r} "
                             f"(evaluators: {', '.join(known)})")
  return fn


def build(context: Context) -> dict[str, Evaluator]:
  """ENTRY -> evaluator: the validation loss, then every entry of the run's config.evals
  that is on."""
  config, out = context.config, {}
  validation = entry(VAL_LOSS, "evaluator", "config.train")(ml_collections.ConfigDict(),
                                                             context)
  if validation is not None:
    out[VAL_LOSS] = validation
  for name, settings in sorted((config.get("evals") or {}).items()):
    if name == VAL_LOSS:
      raise errors.ConfigError(f"config.evals.{name}: the validation loss's own name; "
                               "choose another")
    kind = settings.get("type", "") if hasattr(settings, "get") else ""
    evaluator = entry(kind, "evaluator", f"config.evals.{name}.type={kind!r}")(settings,
                                                                              context)
    if evaluator is not None:
      out[name] = evaluator
  return out


def run(evaluators: dict[str, Evaluator], state: Any) -> dict[str, float]:
  """Every evaluator on the train state: ENTRY/metric (the validation loss's unprefixed)."""
  return {key if name == VAL_LOSS else f"{name}/{key}": value
          for name, fn in evaluators.items() for key, value in fn(state).items()}


def main(argv: list[str]) -> int:
  """`upgen eval NAME [ARGS]`: NAME's own command."""
  if not argv or argv[0].startswith("-"):
    raise errors.ConfigError("which evaluator? upgen eval NAME (evaluators: "
                             f"{', '.join(n.replace('_', '-') for n in names('main'))})")
  return entry(argv[0].replace("-", "_"), "main", "")(argv[1:])

