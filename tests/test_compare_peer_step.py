"""scripts/compare_peer_step.py (#33): its copy of the train step compiles to step.py's and
every variant traces (the op histogram: tests/test_hlo_account.py)."""
import importlib.util
import os
import sys

import pytest

# Tests of a measurement script: CI runs them as their own step (-m scripts).
pytestmark = pytest.mark.scripts

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def cps():
  spec = importlib.util.spec_from_file_location(
      "compare_peer_step", os.path.join(ROOT, "scripts", "compare_peer_step.py"))
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # Its dataclasses look their module up.
  spec.loader.exec_module(module)
  return module


def test_zero_layers_every_variant_and_the_step_copy(cps, capsys):
  assert cps.main(["--layers", "0", "--batch", "2", "--check"]) == 0
  out = capsys.readouterr().out
  assert "this script's train_step against step.py's: same" in out
  for variant in cps.VARIANTS:
    assert f"| {variant.name}: " in out, variant.name
  assert "upgen, all off, minus the peer" in out
