"""scripts/compare_peer_step.py (#33): its copy of the train step compiles to step.py's, every
variant traces, and the op histogram counts what runs."""
import importlib.util
import os
import sys

import jax
import jax.numpy as jnp
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def cps():
  spec = importlib.util.spec_from_file_location(
      "compare_peer_step", os.path.join(ROOT, "scripts", "compare_peer_step.py"))
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # Its dataclasses look their module up.
  spec.loader.exec_module(module)
  return module


def test_histogram_counts_loops_branches_and_fused_ops(cps):
  def f(x, n):
    x = jax.lax.fori_loop(0, n, lambda i, y: y * 2.0 + 1.0, x)
    y = jax.lax.cond(n > 2, lambda: jnp.sum(x.T @ x), lambda: jnp.float32(0))
    return y + jax.random.uniform(jax.random.key(0), ())

  hlo = jax.jit(f).lower(jnp.ones((4, 3)), 3).compile().as_text()
  counts = cps.op_histogram(hlo)
  assert counts["while"] >= 2 and counts["rng"] >= 1  # The fori_loop and a threefry loop.
  assert counts["rng"] == counts["while"] - 1
  assert counts["conditional"] == 1 and counts["dot"] >= 1 and counts["kernels"] >= 3


def test_zero_layers_every_variant_and_the_step_copy(cps, capsys):
  assert cps.main(["--layers", "0", "--batch", "2", "--check"]) == 0
  out = capsys.readouterr().out
  assert "this script's train_step against step.py's: same" in out
  for variant in cps.VARIANTS:
    assert f"| {variant.name}: " in out, variant.name
  assert "upgen, all off, minus the peer" in out
