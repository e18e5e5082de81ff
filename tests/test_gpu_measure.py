"""Tests for scripts/gpu_measure.py, the prepared accelerator run: a misspelt override or a
wrong lever choice would only show on the device, where every minute is rationed."""
import argparse
import os

import pytest

from tests import scripts_loader
from upgen.tools import bench

# Tests of a measurement script: CI runs them as their own step (-m scripts).
pytestmark = pytest.mark.scripts


@pytest.fixture(scope="module")
def gm():
  return scripts_loader.load("gpu_measure")


def test_every_planned_override_parses(gm):
  items = gm.plan()
  names = [name for _, name, _ in items]
  assert len(names) == len(set(names))
  for kind, name, spec in items:
    if kind == "peer":
      assert os.path.basename(spec[0][0]).startswith("peer_"), name
      continue
    # Round two adds levers: all of them to UPGen, the family-independent ones to others.
    levers = [k for k in gm.LEVERS if "upgen" in spec[0] or k in gm.COMMON_LEVERS]
    overrides = list(spec[1]) + [o for k in levers for o in gm.LEVERS[k]]
    config, fv = bench._load_config(["--config", spec[0]] + overrides + gm.LARGE_SHAPES,
                                    bench._common_flags)
    assert config.model.size == "large" and fv.image_vocab == 32768, name


def test_best_combines_only_the_levers_that_helped(gm):
  def ok(tokens_per_s):
    return {"status": "ok", "tokens_per_s": tokens_per_s}

  results = {"upgen_cudnn": ok(100.0), "upgen_masked_logits": ok(100.5),
             "upgen_chunked_ce": ok(104.0), "upgen_masked_chunked": ok(103.0),
             "upgen_bf16_params": ok(99.0), "upgen_batch128": ok(110.0),
             "upgen_batch128_remat": {"status": "error"}}
  chosen, common = gm.best_overrides(results)
  assert chosen == gm.LEVERS["chunked_ce"] + gm.LEVERS["batch128"]
  assert common == gm.LEVERS["batch128"]
  assert gm.best_overrides({}) == ([], [])
  results["upgen_batch128"] = ok(100.9)  # Within 1%: not a gain.
  assert gm.best_overrides(results)[0] == gm.LEVERS["chunked_ce"]


def test_the_before_item_runs_bench_train_from_an_exported_tree(gm, tmp_path):
  """The rehearsal of "UPGen-L before": the exported tree here is this checkout itself (a CI
  checkout may have no history to export); a missing tree is a skip, not a failure."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  (_, name, spec), = [gm.quick(i) for i in gm.plan() if i[0] == "before"]
  args = argparse.Namespace(out=str(tmp_path / "results.jsonl"), deadline=300.0, before=root)
  run = gm.Run(args)
  gm.run_before(run, name, spec, gm.QUICK_SHAPES, 2)
  row = run.results[name]
  assert row["status"] == "ok", row
  assert row["commit"] == gm.BEFORE_COMMIT and row["step_ms"] > 0 and "tiny" in row["command"]
  run.args.before = str(tmp_path / "none")
  gm.run_before(run, name, spec, gm.QUICK_SHAPES, 2)
  assert run.results[name]["status"] == "skipped" and "no exported tree" in run.results[name]["error"]
