"""scripts/compare_peer_sample.py (#33 item 3): every variant compiles, and the account sees
what each switch changes."""
import json

import pytest

from tests import scripts_loader

# Tests of a measurement script: CI runs them as their own step (-m scripts).
pytestmark = pytest.mark.scripts


def _script():
  return scripts_loader.load("compare_peer_sample")


def test_zero_layers_every_variant(tmp_path, capsys):
  cps = _script()
  out_json = tmp_path / "account.jsonl"
  assert cps.main(["--layers", "0", "--batch", "2", "--json", str(out_json)]) == 0
  out = capsys.readouterr().out
  for variant in cps.VARIANTS:
    assert f"| {variant.name}: " in out, variant.name
  rows = {r["program"]: r for r in map(json.loads, out_json.read_text().splitlines())}
  # The remask rank: one sort now, two before; the peer sorts once for its threshold.
  assert (rows["peer"]["op_sort"], rows["upgen"]["op_sort"], rows["before"]["op_sort"]) == (
      1, 1, 2)
  # The uncond stream over Li + Lt positions costs more than over the image alone.
  assert rows["one_2b_forward"]["flops"] > rows["upgen"]["flops"]
  # bf16-stored parameters are half the bytes of float32 ones.
  assert rows["bf16_params"]["kept_params_bytes"] * 2 == rows["upgen"]["kept_params_bytes"]
