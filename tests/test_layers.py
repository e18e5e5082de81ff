"""Tests for upgen/models/layers.py: partitioning metadata, masks, KV cache, scan, remat."""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from configs import common
from upgen.models import layers

RULE_NAMES = {name for name, _ in common.DEFAULT_RULES} | {"layers", None}
BASE = layers.TransformerConfig(num_layers=2, emb_dim=16, num_heads=2, mlp_dim=32)


def _cfg(**kw) -> layers.TransformerConfig:
  return dataclasses.replace(BASE, **kw)


def _x(batch=2, length=6, seed=0):
  return jax.random.normal(jax.random.key(seed), (batch, length, BASE.emb_dim))


def _boxes(tree):
  return jax.tree.leaves(tree, is_leaf=lambda p: isinstance(p, nn.Partitioned))


@pytest.mark.parametrize("kw", [{}, {"scan_layers": True}, {"cross_attention": True}])
def test_every_param_has_logical_axis_names(kw):
  cfg = _cfg(**kw)
  x = _x()
  enc = _x(length=3, seed=1) if cfg.cross_attention else None
  init = functools.partial(layers.TransformerStack(cfg).init, deterministic=True)
  params = jax.eval_shape(init, jax.random.key(0), x, None, enc)["params"]
  extra = {
      "embed": jax.eval_shape(layers.Embed(10, 16).init, jax.random.key(0),
                              jnp.zeros((1, 2), jnp.int32)),
      "unembed": jax.eval_shape(layers.Unembed(10).init, jax.random.key(0), x),
  }
  leaves = _boxes(params) + _boxes(extra)
  assert len(leaves) == len(jax.tree.leaves(nn.unbox(params))) + 3
  for box in leaves:
    assert isinstance(box, nn.Partitioned), type(box)
    assert len(box.names) == len(box.value.shape), (box.names, box.value.shape)
    assert set(box.names) <= RULE_NAMES, box.names
  if cfg.scan_layers:
    assert all(b.names[0] == "layers" and b.value.shape[0] == 2 for b in _boxes(params))
  if cfg.cross_attention:
    assert "cross_attn" in params["layers_1"]
  # Vocabulary-sized kernels are padded for even sharding; logits are sliced back.
  assert extra["unembed"]["params"]["Dense_0"]["kernel"].value.shape == (16, 128)
  out = jax.eval_shape(layers.Unembed(10).apply, nn.unbox(extra["unembed"]), x)
  assert out.shape == (2, 6, 10)


@functools.partial(jax.jit, static_argnums=(0, 4))
def _run(cfg, params, x, mask, deterministic=True):
  """One jitted forward per (config, mode), shared by the tests below."""
  return layers.TransformerStack(cfg).apply({"params": params}, x, mask,
                                            deterministic=deterministic,
                                            rngs={"dropout": jax.random.key(3)})


@pytest.fixture(scope="module")
def params():
  """Unrolled BASE params (causal / dropout variants share the same structure)."""
  init = functools.partial(layers.TransformerStack(BASE).init, deterministic=True)
  return nn.unbox(jax.jit(init)(jax.random.key(0), _x())["params"])


def _restack(params):
  return {"layers": jax.tree.map(lambda *p: jnp.stack(p), params["layers_0"],
                                 params["layers_1"])}


def test_key_mask_ignores_padded_keys(params):
  x = _x()
  valid = jnp.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], bool)
  x2 = x.at[0, 4:].set(100.0)  # Change only padded positions of example 0.
  y = _run(BASE, params, x, layers.key_mask(valid))
  y2 = _run(BASE, params, x2, layers.key_mask(valid))
  np.testing.assert_allclose(y[0, :4], y2[0, :4], atol=1e-5)
  np.testing.assert_allclose(y[1], y2[1], atol=1e-5)
  # Without the mask the padded values do leak into valid positions.
  all_valid = layers.key_mask(jnp.ones_like(valid))
  y3, y4 = _run(BASE, params, x2, all_valid), _run(BASE, params, x, all_valid)
  assert np.abs(np.asarray(y3[0, :4] - y4[0, :4])).max() > 1e-3


def test_causal_attention_ignores_future_tokens(params):
  x = _x()
  y = _run(_cfg(causal=True), params, x, None)
  y2 = _run(_cfg(causal=True), params, x.at[:, 4].set(5.0), None)
  np.testing.assert_allclose(y[:, :4], y2[:, :4], atol=1e-5)
  assert np.abs(np.asarray(y[:, 4] - y2[:, 4])).max() > 1e-3


def test_manual_attention_matches_jax_attention():
  q, k, v = (jax.random.normal(jax.random.key(i), (2, 5, 2, 4)) for i in range(3))
  mask = layers.key_mask(jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool))

  @jax.jit
  def both(q, k, v):
    return [(jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=causal),
             layers.manual_attention(q, k, v, mask, causal=causal)) for causal in (False, True)]

  for ref, out in both(q, k, v):
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_xla_attention_bias_equals_jax_mask_with_gradients():
  """The key mask as a bias (layers.xla_attention, the XLA path of `Attention`) gives jax's
  masked attention: outputs and the gradients of q, k and v, with and without causal."""
  q, k, v = (jax.random.normal(jax.random.key(i), (3, 6, 2, 4)) for i in range(3))
  valid = np.ones((3, 6), bool)
  valid[0, 4:] = False  # Trailing padding.
  valid[1, :2] = False  # Leading keys masked (UPGen's text-only rows mask the image part).
  w = jax.random.normal(jax.random.key(5), (3, 6, 2, 4))
  jax_mask = lambda q, k, v, mask, causal: jax.nn.dot_product_attention(
      q, k, v, mask=mask, is_causal=causal)
  for mask in (layers.key_mask(jnp.asarray(valid)), None):
    for causal in (False, True):
      # Causal, example 1's first two queries have no allowed key: read by no loss.
      read = w if mask is None or not causal else w.at[1, :2].set(0.0)
      grads = lambda attend: jax.jit(jax.value_and_grad(
          lambda q, k, v: jnp.sum(read * attend(q, k, v, mask, causal=causal)),
          argnums=(0, 1, 2)))(q, k, v)
      (out, dqkv), (ref, ref_dqkv) = grads(layers.xla_attention), grads(jax_mask)
      np.testing.assert_allclose(out, ref, rtol=1e-6)
      for got, want in zip(dqkv, ref_dqkv):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
      # Every query's output, those with no allowed key too, is jax's.
      np.testing.assert_allclose(layers.xla_attention(q, k, v, mask, causal=causal),
                                 jax_mask(q, k, v, mask, causal), rtol=1e-6, atol=1e-7)
      if mask is not None:
        assert float(jnp.abs(dqkv[1][0, 4:]).max()) == 0.0  # Masked keys: no gradient.


@pytest.mark.parametrize("length", [5, 6])
def test_fused_attention_pads_to_the_kernels_shapes(length):
  """The cuDNN wrapper's broadcast mask and odd-length padding (run through the XLA kernel
  here: CPU has no cuDNN) leave every real position's output unchanged."""
  q, k, v = (jax.random.normal(jax.random.key(i), (2, length, 2, 4)) for i in range(3))
  valid = np.ones((2, length), bool)
  valid[0, 3:] = False  # Trailing padding.
  valid[1, :2] = False  # Leading keys masked (UPGen's text-only rows mask the image part).
  for mask in (layers.key_mask(jnp.asarray(valid)), None):
    for causal in (False, True):
      ref = jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=causal)
      out = layers.fused_attention(q, k, v, mask, causal=causal, implementation="xla")
      assert out.shape == ref.shape
      rows = slice(None) if mask is None or not causal else slice(2, None)  # Rows with a key.
      np.testing.assert_allclose(out[:, rows], ref[:, rows], atol=1e-5)


@pytest.mark.parametrize("scan", [False, True])
def test_kv_cache_decode_equals_full_forward(params, scan):
  cfg = _cfg(causal=True, scan_layers=scan)
  x = _x()
  want = _run(_cfg(causal=True), params, x, None)
  p = _restack(params) if scan else params
  dec = layers.TransformerStack(dataclasses.replace(cfg, decode=True))
  cache = jax.eval_shape(functools.partial(dec.init, deterministic=True), jax.random.key(0), x)
  cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), cache["cache"])
  step = jax.jit(lambda c, xt: dec.apply({"params": p, "cache": c}, xt, deterministic=True,
                                         mutable=["cache"]))
  prefill = 3 if not scan else 1  # A 3-token prompt, then one token per call.
  y, state = step(cache, x[:, :prefill])
  outs = [y]
  for t in range(prefill, x.shape[1]):
    y, state = step(state["cache"], x[:, t:t + 1])
    outs.append(y)
  np.testing.assert_allclose(jnp.concatenate(outs, axis=1), want, atol=1e-5)
  assert int(jax.tree.leaves(state["cache"])[0].reshape(-1)[-1]) == x.shape[1]  # cache_index


def test_scan_and_remat_match_unrolled(params):
  x = _x()
  mask = layers.key_mask(jnp.array([[1, 1, 1, 1, 0, 0], [1] * 6], bool))
  want = _run(BASE, params, x, mask)
  got = _run(_cfg(scan_layers=True, remat="full"), _restack(params), x, mask)
  np.testing.assert_allclose(got, want, atol=1e-5)

  @functools.partial(jax.jit, static_argnums=1)
  @jax.grad
  def grad(p, cfg):
    return jnp.sum(layers.TransformerStack(cfg).apply({"params": p}, x, deterministic=True) ** 2)

  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
               grad(params, BASE), grad(params, _cfg(remat="dots_no_batch")))


def test_dropout_only_in_training(params):
  x = _x()
  drop = _cfg(dropout_rate=0.3, attention_dropout_rate=0.3)
  np.testing.assert_array_equal(_run(drop, params, x, None, True), _run(BASE, params, x, None))
  assert np.abs(np.asarray(_run(drop, params, x, None, False) - _run(BASE, params, x, None))
                ).max() > 1e-3


def test_config_errors():
  with pytest.raises(ValueError, match="num_heads"):
    _cfg(num_heads=3)
  with pytest.raises(ValueError, match="remat"):
    _cfg(remat="bogus")
  with pytest.raises(ValueError, match="config.model.dtype"):
    layers.dtype_from_name("fp8")
