"""Tests for upgen/models/head_loss.py: the logits levers change no loss and no gradient."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

from tests import token_data
from upgen import families
from upgen.data.spec import DataSpec
from upgen.models import head_loss
from upgen.models import layers
from upgen.models import upgen

N, E, V = 37, 16, 50  # 37 rows: no chunk count divides it.


def _head(seed=0, dtype=jnp.float32):
  x = jax.random.normal(jax.random.key(seed), (N, E))
  module = layers.Unembed(V, dtype=dtype)
  params = nn.unbox(module.init(jax.random.key(seed + 1), x))["params"]
  # A nonzero bias, so that a path dropping it would fail.
  params["Dense_0"]["bias"] = 0.1 * jax.random.normal(jax.random.key(seed + 2),
                                                      params["Dense_0"]["bias"].shape)
  labels = jax.random.randint(jax.random.key(seed + 3), (N,), 0, V)
  # Every third row labelled with its argmax, so "correct" is true somewhere.
  best = jnp.argmax(module.apply({"params": params}, x), -1)
  labels = jnp.where(jnp.arange(N) % 3 == 0, best, labels)
  return module, params, x, labels


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_unembed_logits_are_the_modules(dtype):
  module, params, x, labels = _head(dtype=dtype)
  logits = module.apply({"params": params}, x)
  want_ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  ce, correct = head_loss.cross_entropy(x, params["Dense_0"], labels, vocab_size=V,
                                        dtype=dtype)
  np.testing.assert_allclose(ce, want_ce, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(correct, jnp.argmax(logits, -1) == labels)
  assert np.any(correct) and not np.all(correct)
  assert logits.shape[-1] == V < params["Dense_0"]["kernel"].shape[1]  # Padded columns cut.


@pytest.mark.parametrize("chunks", [2, 5, 37, 64])
def test_chunks_give_the_same_values_and_gradients(chunks):
  _, params, x, labels = _head()
  weights = jnp.linspace(0.5, 1.5, N)

  def loss(head, x, chunks):
    ce, correct = head_loss.cross_entropy(x, head, labels, vocab_size=V, dtype=jnp.float32,
                                          chunks=chunks)
    return jnp.sum(weights * ce), correct

  (want, want_c), want_g = jax.value_and_grad(loss, (0, 1), has_aux=True)(
      params["Dense_0"], x, 1)
  (got, got_c), got_g = jax.jit(jax.value_and_grad(loss, (0, 1), has_aux=True),
                                static_argnums=2)(params["Dense_0"], x, chunks)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  np.testing.assert_array_equal(got_c, want_c)
  for g, w in zip(jax.tree.leaves(got_g), jax.tree.leaves(want_g)):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_chunked_backward_keeps_one_chunks_logits():
  """The point of chunking: the compiled backward holds no N x V float32 buffer."""
  n, e, v = 512, 8, 4096
  x = jnp.ones((n, e))
  head = {"kernel": jnp.ones((e, v)), "bias": jnp.zeros((v,))}
  labels = jnp.zeros((n,), jnp.int32)

  def temp_bytes(chunks):
    f = jax.grad(lambda x: jnp.sum(head_loss.cross_entropy(
        x, head, labels, vocab_size=v, dtype=jnp.float32, chunks=chunks)[0]))
    return jax.jit(f).lower(x).compile().memory_analysis().temp_size_in_bytes

  whole, chunked = temp_bytes(1), temp_bytes(8)
  assert whole >= n * v * 4, whole
  assert chunked < whole / 3, (chunked, whole)


@pytest.mark.parametrize("capacity,chunks", [(0.5, 1), (0.5, 3), (0.05, 1), (1.0, 4)])
def test_masked_positions_only(capacity, chunks):
  _, params, x, labels = _head()
  b, l = 1, N
  where = jax.random.bernoulli(jax.random.key(7), 0.4, (b, l))
  assert 0.05 * N < jnp.sum(where) <= 0.5 * N  # (0.05, 1) overflows: the full path.

  def loss(head, x, capacity, chunks):
    ce, correct = head_loss.masked_cross_entropy(
        x.reshape(b, l, E), head, labels.reshape(b, l), where, vocab_size=V,
        dtype=jnp.float32, capacity=capacity, chunks=chunks)
    return jnp.sum(ce), (ce, correct)

  grad = jax.jit(jax.value_and_grad(loss, (0, 1), has_aux=True), static_argnums=(2, 3))
  (want, (want_ce, want_c)), want_g = grad(params["Dense_0"], x, 0.0, 1)
  (got, (got_ce, got_c)), got_g = grad(params["Dense_0"], x, capacity, chunks)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  np.testing.assert_allclose(got_ce, want_ce, rtol=1e-6, atol=1e-7)
  np.testing.assert_array_equal(got_c, want_c)
  assert not np.any(np.asarray(want_ce)[~np.asarray(where)])  # Zero where not read.
  assert np.any(np.asarray(want_c))
  for g, w in zip(jax.tree.leaves(got_g), jax.tree.leaves(want_g)):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
  # Rows not read get no gradient.
  np.testing.assert_array_equal(np.asarray(got_g[1])[~np.asarray(where)[0]], 0.0)


SPEC = DataSpec(text_vocab_size=40, text_pad_id=0, text_mask_id=1, text_seq_len=6,
                image_vocab_size=24, image_grid=(4, 4))


@pytest.mark.parametrize("capacity,chunks", [(0.6, 1), (0.6, 4), (0.1, 2)])
def test_upgen_loss_and_gradients_unchanged(capacity, chunks):
  """The whole UPGen loss with the levers on equals it with them off; capacity 0.1 is below
  what the batch masks, so the fallback path is checked too."""
  def setup(**keys):
    return families.build(token_data.small_config("upgen", 2, **keys), SPEC)

  base = setup()
  lever = setup(logits_capacity=capacity, logits_chunks=chunks)
  rng = np.random.default_rng(0)
  b = 6
  batch = dict(image_tokens=rng.integers(0, 24, (b, 16)).astype(np.int32),
               text_tokens=rng.integers(2, 40, (b, 6)).astype(np.int32),
               text_mask=np.arange(6)[None] < rng.integers(1, 7, (b, 1)),
               has_image=np.array([1, 1, 1, 1, 0, 1], bool),
               has_text=np.array([1, 1, 1, 1, 1, 0], bool))
  params = nn.unbox(upgen.init_variables(base.model, jax.random.key(0), batch))["params"]

  def run(s):
    f = jax.jit(jax.value_and_grad(functools.partial(
        upgen.loss_fn, model=s.model, settings=s.loss, train=True), has_aux=True))
    return f(params, batch, jax.random.key(3))

  (want, want_m), want_g = run(base)
  (got, got_m), got_g = run(lever)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  for k in want_m:
    np.testing.assert_allclose(got_m[k], want_m[k], rtol=1e-5, atol=1e-6, err_msg=k)
  for g, w in zip(jax.tree.leaves(got_g), jax.tree.leaves(want_g)):
    np.testing.assert_allclose(g, w, rtol=2e-4, atol=1e-6)


def test_lever_keys_are_checked():
  for key, value in (("logits_capacity", 1.5), ("logits_chunks", 0)):
    with pytest.raises(Exception, match=f"config.loss.{key}"):
      families.build(token_data.small_config("upgen", 1, **{key: value}), SPEC)
