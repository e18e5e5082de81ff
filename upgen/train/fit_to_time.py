"""config.train.fit_to_time: a run's step count fitted to its time budget from the speed of
its own first steps, once, so that its learning-rate schedule ends when the budget does.

The speed is measured over steps (first + FIT_FROM, fit_at], fit_at within the warm-up
(where the learning rate does not depend on the total), so the fitted run's schedule is the
one a run configured with that many steps has from its first step. The count is written to
W/fitted_steps.json and config.json; a resumed fitted run keeps it.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Optional

import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from upgen import rundir

log = logging.getLogger("upgen.train")

FIT_FROM, FIT_AT_MOST, FIT_AT_LEAST = 3, 50, 12
FIT_MARGIN = 0.02  # Of the time left: checkpoints and previews inside the loop.


def fit_at(config: ml_collections.ConfigDict) -> int:
  """The step at which config.train.fit_to_time fits the run's steps."""
  return min(max(int(config.optim.warmup_steps), FIT_AT_LEAST), FIT_AT_MOST)


def fitted_steps(*, budget_s: float, elapsed_s: float, done: int, seconds_per_step: float,
                 most: int) -> int:
  """The steps a run holds: `done`, and as many more as the rest of the budget fits at the
  measured speed (less FIT_MARGIN); at most `most`, at least one more."""
  more = (budget_s - elapsed_s) * (1 - FIT_MARGIN) / max(seconds_per_step, 1e-9)
  return int(min(most, done + max(1, int(more))))


def read_fitted(workdir: str) -> Any:
  """What an earlier process of this run fitted (fitted_steps.json), or None."""
  path = os.path.join(workdir, rundir.FITTED_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


class FitToTime:
  """Watches the loop's steps and, at fit_at, says how many the budget holds.

  `observe(step, now)` after each dispatched step (`step`: the steps done before it) returns
  None, or once the fitted count: every process gets the first process's count."""

  def __init__(self, config: ml_collections.ConfigDict, *, first_step: int, start: float):
    self._minutes = config.train.max_minutes
    self._budget_s = 60 * config.train.max_minutes
    self._most = int(config.train.steps)
    self._first, self._start = first_step, start
    self._fit_at = max(fit_at(config), first_step + 2 * FIT_FROM)
    self._from_t: Optional[float] = None
    self.done = False
    self.record: dict[str, Any] = {}

  def observe(self, step: int, now: float) -> Optional[int]:
    if self.done:
      return None
    if step == self._first + FIT_FROM:  # The steps before: compiles, warming up.
      self._from_t = now
    elif step == self._fit_at and self._from_t is not None:
      self.done = True
      return self._fit(step, now)
    return None

  def _fit(self, step: int, now: float) -> int:
    seconds_per_step = (now - self._from_t) / (step - self._first - FIT_FROM)
    # A new count compiles the step again: about as long as the first steps took.
    compile_s = max(self._from_t - self._start - FIT_FROM * seconds_per_step, 0.0)
    steps = fitted_steps(budget_s=self._budget_s, elapsed_s=now - self._start + compile_s,
                         done=step, seconds_per_step=seconds_per_step, most=self._most)
    if jax.process_count() > 1:  # Every process takes the first one's count.
      steps = int(multihost_utils.broadcast_one_to_all(np.int32(steps)))
    log.info("fitted %d steps to %.1f minutes at %.1f ms per step (measured over steps "
             "%d-%d)", steps, self._minutes, 1e3 * seconds_per_step,
             self._first + FIT_FROM, step)
    self.record = {"steps": steps, "at_step": step, "budget_minutes": self._minutes,
                   "seconds_per_step": seconds_per_step, "seconds_before": now - self._start,
                   "compile_seconds": compile_s}
    return steps

  def save(self, workdir: str) -> None:
    """fitted_steps.json, from the first process."""
    if jax.process_index() == 0:
      with open(os.path.join(workdir, rundir.FITTED_FILE), "w") as f:
        json.dump(self.record, f, indent=2)
