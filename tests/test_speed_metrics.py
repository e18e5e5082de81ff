"""Training logs its own speed (#33): every log interval, perf/step_time_s,
perf/tflops_per_device from the FLOP count `upgen bench train` prints, and perf/mfu exactly
when the device's peak is known."""
import logging

import pytest

from configs import upgen as upgen_config
from tests import token_data
from tests import test_periodic
from upgen import flops as flops_lib
from upgen.runtime import writers
from upgen.train import periodic
from upgen.train import trainer


def test_interval_speed_from_the_flop_count_and_the_unpaused_time():
  rows, clock = [], test_periodic.Clock()
  cost = periodic.StepCost(flops_per_step=6e12, num_devices=2, peak_flops_per_device=1e12)
  interval = periodic.IntervalMetrics(lambda step, row: rows.append(row), examples_per_step=8,
                                      tokens_per_step=80, cost=cost, clock=clock)
  with interval.paused():  # A compile, a checkpoint: not the steps' time.
    clock.now += 100.0
  for _ in range(4):
    interval.dispatched()
    interval.add({"loss": 1.0})
    clock.now += 1.5
  row = interval.flush(4)
  assert row["perf/step_time_s"] == pytest.approx(1.5)
  assert row["examples_per_sec"] == pytest.approx(8 / 1.5)
  assert row["perf/tflops_per_device"] == pytest.approx(6e12 / 1.5 / 2 / 1e12)  # 2 TFLOP/s.
  assert row["perf/mfu"] == pytest.approx(2.0)
  # No peak: no MFU; no FLOP count (a family without one): step time only.
  for cost, present in ((periodic.StepCost(6e12, 1, None), {"perf/tflops_per_device"}),
                        (periodic.StepCost(), set())):
    interval = periodic.IntervalMetrics(lambda *_: None, examples_per_step=8,
                                        tokens_per_step=80, cost=cost, clock=clock)
    interval.dispatched()
    interval.add({"loss": 1.0})
    clock.now += 2.0
    perf = {k for k in interval.flush(1) if k.startswith("perf/")}
    assert perf == {"perf/step_time_s"} | present


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return token_data.write(str(tmp_path_factory.mktemp("records")))


def _train(data_dir, workdir):
  c = upgen_config.get_config("tiny")
  c.update_from_flattened_dict({**token_data.tiny_overrides(data_dir), "train.steps": 6,
                                "train.log_every": 2, "train.checkpoint_every": 6})
  trainer.train(c, workdir)
  setup = trainer.build(c)  # The count `upgen bench train` prints (bench.time_train).
  flops_per_step = setup.family.train_flops(setup.model_config).total * c.data.batch_size
  rows = [r for r in writers.read_metrics(workdir) if "loss" in r]
  assert [r["step"] for r in rows] == [2, 4, 6]
  return flops_per_step, rows


def test_training_rows_carry_step_time_and_tflops_but_no_guessed_mfu(data_dir, tmp_path,
                                                                     caplog):
  with caplog.at_level(logging.INFO, logger="upgen.train"):
    flops_per_step, rows = _train(data_dir, str(tmp_path / "run"))
  for r in rows:
    step_s = r["perf/step_time_s"]
    assert 0 < step_s < 10
    assert r["examples_per_sec"] == pytest.approx(8 / step_s, rel=1e-9)
    assert r["perf/tflops_per_device"] == pytest.approx(flops_per_step / step_s / 1e12,
                                                        rel=1e-9)
    assert "perf/mfu" not in r  # The CPU's peak is not known.
  said = [m for m in caplog.messages if "perf/mfu is not logged" in m]
  assert len(said) == 1 and "'cpu'" in said[0]


def test_training_rows_carry_mfu_where_the_peak_is_known(data_dir, tmp_path, monkeypatch):
  monkeypatch.setattr(flops_lib, "DEVICE_PEAKS", (("cpu", 2e12, 1e11),))
  _, rows = _train(data_dir, str(tmp_path / "run"))
  for r in rows:
    assert r["perf/mfu"] == pytest.approx(r["perf/tflops_per_device"] * 1e12 / 2e12,
                                          rel=1e-9)
