"""scripts/compare_peer_step.py (#33): its copy of the train step compiles to step.py's and
every variant traces (the op histogram: tests/test_hlo_account.py)."""

import pytest

from tests import scripts_loader

# Tests of a measurement script: CI runs them as their own step (-m scripts).
pytestmark = pytest.mark.scripts


@pytest.fixture(scope="module")
def cps():
  return scripts_loader.load("compare_peer_step")


def test_zero_layers_every_variant_and_the_step_copy(cps, capsys):
  assert cps.main(["--layers", "0", "--batch", "2", "--check"]) == 0
  out = capsys.readouterr().out
  assert "this script's train_step against step.py's: same" in out
  for variant in cps.VARIANTS:
    assert f"| {variant.name}: " in out, variant.name
  assert "upgen, all off, minus the peer" in out
