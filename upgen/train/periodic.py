"""Small objects the training loop keeps its state in (as clu's periodic actions do): the
interval means it logs with their throughput and speed, SIGTERM as a flag every process
agrees on, and where the wall time went."""
from __future__ import annotations

import contextlib
import dataclasses
import signal
import threading
import time
from typing import Any, Callable, Iterator, Optional

import jax
from jax.experimental import multihost_utils
import numpy as np

from upgen import flops as flops_lib


class Terminated(Exception):
  """SIGTERM arrived outside the training loop (start-up, the final evaluation), where no
  flag is checked: the run stops there."""


@contextlib.contextmanager
def terminate_raises() -> Iterator[None]:
  """SIGTERM raises Terminated (in the main thread) while in scope, except inside a
  Preemption, which turns it into a flag instead."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return

  def handler(signum, frame):
    del signum, frame
    raise Terminated()

  previous = signal.signal(signal.SIGTERM, handler)
  try:
    yield
  finally:
    signal.signal(signal.SIGTERM, previous)


class Preemption:
  """Turns SIGTERM into a flag the loop checks between steps (then checkpoint and exit)."""

  def __init__(self):
    self.requested = threading.Event()
    self._previous = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, lambda *_: self.requested.set())
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def agreed(self, out_of_time: bool, step: int, every: int) -> tuple[bool, bool]:
    """(preempted, out of time), the same on every process: each is True once it is True on
    any process (clocks differ; a process that stopped alone would hang the others).
    With several processes the flags are exchanged only every `every` steps: the exchange
    waits for the step in flight, so doing it each step would stall the host's dispatch."""
    flags = np.asarray([self.requested.is_set(), out_of_time])
    if jax.process_count() > 1:
      if step % every:
        return False, False
      flags = np.any(multihost_utils.process_allgather(flags), axis=0)
    return bool(flags[0]), bool(flags[1])


@dataclasses.dataclass(frozen=True)
class StepCost:
  """What a step time is turned into: model FLOPs per optimizer step (the count `upgen bench
  train` prints, upgen/flops.py; 0 = the family has none) over `num_devices`, and the peak
  FLOP/s of one device (None = unknown, as on the CPU: no MFU)."""
  flops_per_step: float = 0.0
  num_devices: int = 1
  peak_flops_per_device: Optional[float] = None


class IntervalMetrics:
  """The means of the step metrics over each logging interval, written with the examples,
  tokens and steps per second of the interval and its speed: `perf/step_time_s`, and with a
  `cost`, `perf/tflops_per_device` and `perf/mfu` (the latter only where the device's peak
  is known). `write(step, row)` receives each row.

  Throughput and step time count the steps dispatched in the interval over its wall time
  less the time spent `paused` (checkpoints, evaluations, a compile); the means, the steps
  whose metrics arrived (the loop reads a step's metrics after dispatching the next)."""

  def __init__(self, write: Callable[[int, dict[str, float]], None], *,
               examples_per_step: int, tokens_per_step: int, cost: StepCost = StepCost(),
               clock: Callable[[], float] = time.perf_counter):
    self._write, self._clock, self._cost = write, clock, cost
    self._examples_per_step, self._tokens_per_step = examples_per_step, tokens_per_step
    self._reset()

  def _reset(self) -> None:
    self._sums: dict[str, float] = {}
    self._finished = self._dispatched = 0
    self._start = self._clock()
    self._paused = 0.0

  @contextlib.contextmanager
  def paused(self) -> Iterator[None]:
    """Time spent inside is not the steps' (an interval flushed inside still counts it)."""
    start = self._clock()
    try:
      yield
    finally:
      self._paused += self._clock() - max(start, self._start)

  def dispatched(self) -> None:
    """A step went to the device."""
    self._dispatched += 1

  def add(self, metrics: dict[str, float]) -> None:
    """A finished step's metrics (host floats)."""
    for k, v in metrics.items():
      self._sums[k] = self._sums.get(k, 0.0) + v
    self._finished += 1

  def flush(self, step: int, at_step: Optional[dict[str, float]] = None
            ) -> Optional[dict[str, float]]:
    """Writes the interval's row at `step` (nothing when no step finished since the last);
    `at_step` holds values of that step alone, written as they are (not means)."""
    if not self._finished:
      return None
    dt = max(self._clock() - self._start - self._paused, 1e-9)
    row = {k: v / self._finished for k, v in self._sums.items()}
    row.update(at_step or {})
    row["examples_per_sec"] = self._dispatched * self._examples_per_step / dt
    if self._tokens_per_step:
      row["tokens_per_sec"] = self._dispatched * self._tokens_per_step / dt
    row["steps_per_sec"] = self._finished / dt
    if self._dispatched:
      row.update(speed(dt / self._dispatched, self._cost))
    self._write(step, row)
    self._reset()
    return row


def speed(step_s: float, cost: StepCost) -> dict[str, float]:
  """`perf/step_time_s`, `perf/tflops_per_device` (with a FLOP count) and `perf/mfu` (with a
  known peak) of a step of `step_s` seconds."""
  row = {"perf/step_time_s": step_s}
  if cost.flops_per_step:
    row["perf/tflops_per_device"] = cost.flops_per_step / step_s / cost.num_devices / 1e12
    if cost.peak_flops_per_device:
      row["perf/mfu"] = flops_lib.mfu(cost.flops_per_step, step_s, cost.num_devices,
                                      cost.peak_flops_per_device)
  return row


class Timings:
  """Where the wall time went, by name: `with timings("checkpoints"): ...` adds to it."""

  def __init__(self, *names: str, clock: Callable[[], float] = time.perf_counter):
    self.spent: dict[str, float] = {name: 0.0 for name in names}
    self._clock = clock

  @contextlib.contextmanager
  def __call__(self, what: str) -> Iterator[None]:
    start = self._clock()
    try:
      yield
    finally:
      self.spent[what] = self.spent.get(what, 0.0) + self._clock() - start

  def rounded(self) -> dict[str, Any]:
    return {k: round(v, 2) for k, v in self.spent.items()}
