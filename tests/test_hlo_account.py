"""upgen/tools/hlo_account.py: the op histogram counts what runs, and `account` reads XLA's
figures of a compiled program."""
import jax
import jax.numpy as jnp

from upgen.tools import hlo_account


def test_histogram_counts_loops_branches_and_fused_ops():
  def f(x, n):
    x = jax.lax.fori_loop(0, n, lambda i, y: y * 2.0 + 1.0, x)
    y = jax.lax.cond(n > 2, lambda: jnp.sum(x.T @ x), lambda: jnp.float32(0))
    return y + jax.random.uniform(jax.random.key(0), ())

  hlo = jax.jit(f).lower(jnp.ones((4, 3)), 3).compile().as_text()
  counts = hlo_account.op_histogram(hlo)
  assert counts["while"] >= 2 and counts["rng"] >= 1  # The fori_loop and a threefry loop.
  assert counts["rng"] == counts["while"] - 1
  assert counts["conditional"] == 1 and counts["dot"] >= 1 and counts["kernels"] >= 3


def test_account_counts_flops_of_a_matmul_and_the_kept_bytes():
  x = jax.ShapeDtypeStruct((64, 32), jnp.float32)
  w = jax.ShapeDtypeStruct((32, 16), jnp.float32)
  out = hlo_account.account(jax.jit(lambda x, w: x @ w), (x, w), {"params": w})
  assert out["flops"] == 2 * 64 * 32 * 16
  assert out["kept_params_bytes"] == 32 * 16 * 4
  assert out["op_dot"] == 1 and out["op_while"] == 0
  assert hlo_account.fmt(2.5e9, 1e9) == "2.500" and hlo_account.fmt(1234, 1) == "1,234"
