"""Evaluators chosen by name in the config (big_vision style), run by the trainer with the
validation loss (every config.train.eval_every steps and at the end) and logged as
NAME/metric in metrics.jsonl and TensorBoard:

  config.evals.text = ml_collections.ConfigDict(dict(type="text_ppl", text="held_out.txt"))
  config.evals.samples.scorer = "/runs/clip"  # CLIP score + FID of samples (sample_eval.py)

`type` picks the evaluator from EVALUATORS (module:function); the other keys are its
settings. The function gets (settings, setup, config) once, before training, and returns
params -> {metric: float}, or None when its settings leave it off (a text_ppl entry with an
empty `text`: a config can hold the entry, and `--config.evals.NAME.text=FILE` turn it on).
"""
from __future__ import annotations

import importlib
from typing import Any, Callable

from upgen import errors

EVALUATORS = {
    "text_ppl": "upgen.evaluators.text_ppl:evaluator",
    "samples": "upgen.evaluators.samples:evaluator",
}

Evaluator = Callable[[Any], dict[str, float]]


def build(config: Any, setup: Any) -> dict[str, Evaluator]:
  """NAME -> evaluator for every entry of config.evals (none when the group is absent)."""
  out = {}
  for name, settings in sorted((config.get("evals") or {}).items()):
    kind = settings.get("type", "") if hasattr(settings, "get") else ""
    if kind not in EVALUATORS:
      raise errors.ConfigError(f"config.evals.{name}.type={kind!r}: choose one of "
                               f"{sorted(EVALUATORS)}")
    module, function = EVALUATORS[kind].split(":")
    evaluator = getattr(importlib.import_module(module), function)(settings, setup, config)
    if evaluator is not None:
      out[name] = evaluator
  return out


def run(evaluators: dict[str, Evaluator], params: Any) -> dict[str, float]:
  return {f"{name}/{key}": value for name, fn in evaluators.items()
          for key, value in fn(params).items()}
