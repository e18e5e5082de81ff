"""The training loop's small state objects (train/periodic.py, train/fit_to_time.py), each
alone: interval means and throughput, where the time went, SIGTERM as a flag, and the
fit-to-time measurement."""
import json
import os
import signal

import ml_collections
import pytest

from upgen.train import fit_to_time
from upgen.train import periodic


class Clock:
  def __init__(self):
    self.now = 0.0

  def __call__(self):
    return self.now


def test_interval_means_and_throughput():
  rows, clock = [], Clock()
  interval = periodic.IntervalMetrics(lambda step, row: rows.append((step, row)),
                                      examples_per_step=8, tokens_per_step=80, clock=clock)
  assert interval.flush(0) is None and rows == []  # Nothing finished: nothing written.
  for loss in (1.0, 3.0):
    interval.dispatched()
    interval.add({"loss": loss, "grad_norm": 2 * loss})
  interval.dispatched()  # Dispatched, its metrics not read yet: throughput counts it.
  clock.now = 2.0
  row = interval.flush(10)
  assert rows == [(10, row)]
  assert row == {"loss": 2.0, "grad_norm": 4.0, "examples_per_sec": 12.0,
                 "tokens_per_sec": 120.0, "steps_per_sec": 1.0,
                 "perf/step_time_s": 2.0 / 3}  # No FLOP count given: no TFLOP/s, no MFU.
  # The next interval starts afresh, at the flush.
  interval.add({"loss": 5.0})
  clock.now = 3.0
  assert interval.flush(11) == {"loss": 5.0, "examples_per_sec": 0.0, "tokens_per_sec": 0.0,
                                "steps_per_sec": 1.0}
  # Pixels only: no tokens per second.
  pixels = periodic.IntervalMetrics(lambda *_: None, examples_per_step=4, tokens_per_step=0,
                                    clock=clock)
  pixels.dispatched()
  pixels.add({"loss": 1.0})
  clock.now = 4.0
  assert "tokens_per_sec" not in pixels.flush(1)


def test_timings_add_up_by_name():
  clock = Clock()
  timings = periodic.Timings("checkpoints", "evals", clock=clock)
  for _ in range(2):
    with timings("checkpoints"):
      clock.now += 1.5
  with pytest.raises(RuntimeError):
    with timings("final_eval"):  # Counted even when what it times fails.
      clock.now += 0.25
      raise RuntimeError
  assert timings.rounded() == {"checkpoints": 3.0, "evals": 0.0, "final_eval": 0.25}


def test_sigterm_becomes_a_flag_and_the_handler_is_restored():
  before = signal.getsignal(signal.SIGTERM)
  with periodic.Preemption() as preemption:
    assert preemption.agreed(False, 1, 1) == (False, False)
    assert preemption.agreed(True, 1, 1) == (False, True)  # Out of time alone.
    os.kill(os.getpid(), signal.SIGTERM)  # Would end the test process without the handler.
    assert preemption.requested.wait(5)
    assert preemption.agreed(False, 2, 1) == (True, False)
  assert signal.getsignal(signal.SIGTERM) == before


def fit_config(minutes=1.0, warmup=20, steps=1000):
  return ml_collections.ConfigDict({"train": {"max_minutes": minutes, "steps": steps},
                                    "optim": {"warmup_steps": warmup}})


def test_fit_to_time_measures_after_the_first_steps_and_fits_once(tmp_path):
  config = fit_config()
  fit = fit_to_time.FitToTime(config, first_step=0, start=0.0)
  out = {}
  for step in range(40):
    # The first three steps take 1 s each (compiles), then 0.1 s a step.
    now = step * 1.0 if step <= 3 else 3.0 + (step - 3) * 0.1
    fitted = fit.observe(step, now)
    if fitted is not None:
      out[step] = fitted
  assert list(out) == [fit_to_time.fit_at(config)] == [20]  # Once, inside the warm-up.
  # 0.1 s a step over steps 3-20; a new count compiles again for as long as the first steps'
  # excess took (3 s - 3 x 0.1 s); 98% of what is left of the minute.
  seconds_before, compile_s = 3.0 + 17 * 0.1, 3.0 - 0.3
  more = int((60 - seconds_before - compile_s) * 0.98 / 0.1)
  assert out[20] == fit_to_time.fitted_steps(
      budget_s=60, elapsed_s=seconds_before + compile_s, done=20, seconds_per_step=0.1,
      most=1000) == 20 + more
  fit.save(str(tmp_path))
  saved = fit_to_time.read_fitted(str(tmp_path))
  assert saved["steps"] == out[20] and saved["at_step"] == 20
  assert saved["seconds_per_step"] == pytest.approx(0.1)
  assert saved["compile_seconds"] == pytest.approx(compile_s)
  assert fit_to_time.read_fitted(str(tmp_path / "elsewhere")) is None
  with open(tmp_path / "fitted_steps.json") as f:
    assert json.load(f)["budget_minutes"] == 1.0


def test_fit_to_time_of_a_resumed_run_measures_from_where_it_started():
  config = fit_config(minutes=10.0, warmup=0, steps=500)
  fit = fit_to_time.FitToTime(config, first_step=100, start=0.0)
  fitted = [fit.observe(s, (s - 100) * 0.01) for s in range(100, 120)]
  # At least 2 x FIT_FROM steps after the first: step 106, not fit_at's 12.
  assert [i + 100 for i, f in enumerate(fitted) if f is not None] == [106]
  assert fitted[6] == 500  # The budget holds more than config.train.steps: at most that.
