"""runtime/batching.run_batched: the one pad-to-a-fixed-batch helper of the inference API,
the image tokenizer, the CLIP scorer and the demo."""
import jax
import jax.numpy as jnp
import numpy as np

from upgen.runtime import batching


def traced_fn():
  shapes = []

  @jax.jit
  def fn(params, x, y):
    shapes.append(x.shape)  # Runs once per compile.
    return x * params + y

  return fn, shapes


def test_rows_come_back_in_order_whatever_the_batch():
  x, y = np.arange(7.0), np.arange(7.0) * 10
  fn, shapes = traced_fn()
  out = batching.run_batched(fn, 2.0, [x, y], 3)
  np.testing.assert_array_equal(out, 2 * x + y)
  assert shapes == [(3,)]  # The last batch of 1 was padded to 3: one compile.
  # Fewer rows than a batch: padded to the rows there are, not to the batch.
  assert batching.run_batched(fn, 2.0, [x[:2], y[:2]], 3).tolist() == [0.0, 12.0]
  assert shapes == [(3,), (2,)]


def test_fixed_batches_compile_once_for_any_number_of_rows():
  fn, shapes = traced_fn()
  for n in (1, 2, 5, 8):
    x = np.arange(float(n))
    out = batching.run_batched(fn, 1.0, [x, x], 4, fixed=True)
    np.testing.assert_array_equal(out, 2 * x)
  assert shapes == [(4,)]


def test_a_seed_gives_each_batch_its_own_key():
  @jax.jit
  def draw(params, x, rng):
    return x + params * jax.random.uniform(rng, x.shape)

  x = np.zeros(6, np.float32)
  a = batching.run_batched(draw, 1.0, [x], 3, seed=5)
  b = batching.run_batched(draw, 1.0, [x], 3, seed=5)
  np.testing.assert_array_equal(a, b)  # The same seed, the same draws.
  expect = np.concatenate([jax.random.uniform(jax.random.fold_in(jax.random.key(5), i), (3,))
                           for i in range(2)])
  np.testing.assert_allclose(a, expect)
  assert not np.array_equal(a[:3], a[3:])  # Batch 1 is not batch 0's key again.
  # Row i's draw does not depend on how many rows follow it in a fixed batch.
  c = batching.run_batched(draw, 1.0, [x[:4]], 3, seed=5, fixed=True)
  np.testing.assert_array_equal(c, a[:4])
  assert jnp.asarray(c).shape == (4,)
