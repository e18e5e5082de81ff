"""Tests for upgen/models/bart.py (with upgen/sampling/ar_sampler.py): the shift that the
public attempt this family comes from missed, cached decoding, guidance, an overfit that
greedy decoding must reproduce, both architectures."""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

from configs import bart as bart_config
from configs import common
from tests import token_data
from upgen import families
from upgen.data.spec import DataSpec
from upgen.models import bart
from upgen.sampling import ar_sampler
from upgen.sampling.settings import SampleSettings

LI, LT, VI, VT = 4, 5, 4, 24  # A 2x2 grid of 4 codes.
SPEC = DataSpec(text_vocab_size=VT, text_pad_id=0, text_mask_id=1, text_bos_id=2,
                text_eos_id=3, text_seq_len=LT, image_vocab_size=VI, image_grid=(2, 2))
ARCHS = ("preln", "bart")
RULE_NAMES = {name for name, _ in common.DEFAULT_RULES} | {"layers", None}


def _setup(architecture="preln", num_layers=2, spec=SPEC, **keys):
  c = token_data.small_config("bart", num_layers, architecture=architecture, encoder_layers=1,
                              **keys)
  return families.build(c, spec)


def _batch(seed=0, b=4):
  rng = np.random.default_rng(seed)
  lengths = rng.integers(1, LT + 1, b)
  mask = np.arange(LT)[None] < lengths[:, None]
  text = np.where(mask, rng.integers(4, VT, (b, LT)), 0).astype(np.int32)
  return {"image_tokens": rng.integers(0, VI, (b, LI)).astype(np.int32), "text_tokens": text,
          "text_mask": mask, "has_image": np.ones(b, bool), "has_text": np.ones(b, bool)}


def _params(setup, batch, seed=0):
  return nn.unbox(jax.jit(bart.init_variables, static_argnums=0)(
      setup.model, jax.random.key(seed), batch)["params"])


def test_variants_axes_and_config_errors():
  big = DataSpec(text_vocab_size=50265, text_pad_id=1, text_mask_id=50264, text_bos_id=0,
                 text_eos_id=2, text_seq_len=64, image_vocab_size=16384, image_grid=(16, 16))
  counts = {}
  for variant in ("tiny", "base", "large"):
    setup = families.build(bart_config.get_config(variant), big)
    boxed = jax.eval_shape(lambda r: bart.init_variables(setup.model, r, setup.dummy_batch(1)),
                           jax.random.key(0))["params"]
    for box in jax.tree.leaves(boxed, is_leaf=lambda p: isinstance(p, nn.Partitioned)):
      assert isinstance(box, nn.Partitioned) and set(box.names) <= RULE_NAMES, box
    counts[variant] = sum(x.size for x in jax.tree.leaves(nn.unbox(boxed)))
  pad = lambda n: -(-n // 128) * 128
  for variant, (layers, e, m) in (("base", (6, 768, 3072)), ("large", (12, 1024, 4096))):
    encoder_block = 4 * e * e + 4 * e + 2 * e * m + m + e + 4 * e  # Attention, MLP, 2 norms.
    decoder_block = encoder_block + 4 * e * e + 4 * e + 2 * e  # + cross-attention, its norm.
    embeddings = (pad(50265) + 1024 + 2 + pad(16385) + 256 + 2) * e + 2 * 2 * e
    head = e * pad(16384) + pad(16384)
    want = layers * (encoder_block + decoder_block) + embeddings + head
    assert counts[variant] == want, (variant, counts[variant], want)
  large = families.build(bart_config.get_config("large"), big).model_config
  assert (large.norm_position, large.norm_eps, large.activation) == ("post", 1e-5, "gelu")
  tiny = _setup().model_config
  assert (tiny.norm_position, tiny.activation) == ("pre", "gelu_tanh")
  with pytest.raises(ValueError, match="config.model.architecture='gpt'"):
    _setup(architecture="gpt")
  with pytest.raises(ValueError, match="config.model.norm_position: set in the config"):
    c = token_data.small_config("bart", 1, architecture="bart")
    c.model.norm_position = "pre"
    families.build(c, SPEC)
  with pytest.raises(ValueError, match="has no bos token"):
    _setup(spec=dataclasses.replace(SPEC, text_bos_id=-1))
  with pytest.raises(ValueError, match="config.model.max_positions=4 is shorter"):
    _setup(architecture="bart", max_positions=4)


def test_encoder_inputs_wrap_the_caption_and_the_empty_caption_has_two_tokens():
  cfg = _setup().model_config
  text = np.array([[7, 8, 9, 0, 0], [0, 0, 0, 0, 0], [5, 6, 7, 8, 9]], np.int32)
  valid = np.array([[1, 1, 1, 0, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]], bool)
  ids, mask = (np.asarray(x) for x in bart.encoder_inputs(text, valid, cfg))
  assert ids.tolist() == [[2, 7, 8, 9, 3, 0, 0], [2, 3, 0, 0, 0, 0, 0], [2, 5, 6, 7, 8, 9, 3]]
  assert mask.sum(1).tolist() == [5, 2, 7]


@pytest.mark.parametrize("architecture", ARCHS)
def test_code_i_changes_no_logit_at_positions_up_to_i(architecture):
  """The decoder input is shifted right and its self-attention causal: logits at position j
  depend on codes < j only (unshifted, the model could read code j itself)."""
  setup = _setup(architecture)
  batch = _batch(1)
  params = _params(setup, batch)
  logits = jax.jit(lambda p, codes: setup.model.apply(
      {"params": p}, batch["text_tokens"], batch["text_mask"], codes))
  base = np.asarray(logits(params, batch["image_tokens"]))
  for i in range(LI):
    codes = batch["image_tokens"].copy()
    codes[:, i] = (codes[:, i] + 1) % VI
    changed = np.abs(np.asarray(logits(params, codes)) - base).max(axis=(0, 2))
    assert (changed[:i + 1] == 0).all(), (i, changed)
    if i + 1 < LI:
      assert changed[i + 1:].max() > 1e-4, (i, changed)  # Later positions do read it.


@pytest.mark.parametrize("architecture", ARCHS)
def test_cached_decoding_gives_the_uncached_logits_and_guidance_zero_is_unguided(architecture):
  setup = _setup(architecture)
  batch = _batch(2)
  params = _params(setup, batch)
  model = setup.model
  full = np.asarray(jax.jit(model.apply)({"params": params}, batch["text_tokens"],
                                         batch["text_mask"], batch["image_tokens"]))

  @jax.jit
  def teacher_forced(params):
    first, cache = ar_sampler.prefill(params, model, batch["text_tokens"], batch["text_mask"],
                                      ar_sampler.init_cache(model, len(batch["text_tokens"])))

    def body(cache, i):
      logits, cache = ar_sampler.step(params, model, jnp.asarray(batch["image_tokens"])[:, i],
                                      cache, i)
      return cache, logits

    _, rest = jax.lax.scan(body, cache, jnp.arange(LI - 1))
    return jnp.concatenate([first[:, None], jnp.swapaxes(rest, 0, 1)], axis=1)

  np.testing.assert_allclose(np.asarray(teacher_forced(params)), full, atol=2e-5)
  sample = lambda **kw: np.asarray(ar_sampler.text_to_image(
      params, model, batch["text_tokens"], batch["text_mask"], jax.random.key(3),
      SampleSettings(**kw)))
  np.testing.assert_array_equal(sample(guidance_scale=0.0), sample(guidance_scale=0.0))
  greedy = sample(temperature=0.0)
  # Greedy decoding by full uncached forwards, one code at a time.
  codes = np.zeros_like(batch["image_tokens"])
  for i in range(LI):
    codes[:, i] = np.argmax(np.asarray(jax.jit(model.apply)(
        {"params": params}, batch["text_tokens"], batch["text_mask"], codes))[:, i], -1)
  np.testing.assert_array_equal(greedy, codes)
  np.testing.assert_array_equal(sample(top_k=1, guidance_scale=0.0), codes)
  np.testing.assert_array_equal(sample(beam_size=1, guidance_scale=0.0), codes)


@pytest.fixture(scope="module")
def overfit():
  """A 1-layer model trained for 300 Adam steps on 4 captions with their own code grids."""
  setup = _setup("preln", num_layers=1, caption_dropout=0.0)
  batch = _batch(4)
  batch["image_tokens"] = np.array([[0, 1, 2, 3], [3, 3, 0, 1], [2, 0, 1, 1], [1, 2, 3, 0]],
                                   np.int32)
  opt = optax.adam(1e-2)
  loss_fn = setup.loss_fn()

  @functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})
  def train(params):
    def step(carry, rng):
      params, opt_state = carry
      (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(
          params, batch, rng, train=True, step=0)
      updates, opt_state = opt.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), loss
    (params, _), losses = jax.lax.scan(step, (params, opt.init(params)),
                                       jax.random.split(jax.random.key(1), 300))
    return params, losses

  params, losses = train(_params(setup, batch))
  return setup, batch, params, np.asarray(losses)


def test_overfit_greedy_decoding_reproduces_the_grids(overfit):
  setup, batch, params, losses = overfit
  assert losses[-10:].mean() < 0.05 * losses[:5].mean(), (losses[:5], losses[-10:])
  greedy = np.asarray(ar_sampler.text_to_image(
      params, setup.model, batch["text_tokens"], batch["text_mask"], jax.random.key(0),
      SampleSettings(temperature=0.0)))
  np.testing.assert_array_equal(greedy, batch["image_tokens"])
  # The training loss on these examples is the sampler's own: -mean log p of each code
  # under the cached decoder, fed the true codes.
  loss, _ = setup.loss_fn()(params, batch, jax.random.key(0), train=False, step=0)
  first, cache = ar_sampler.prefill(params, setup.model, batch["text_tokens"],
                                    batch["text_mask"], ar_sampler.init_cache(setup.model, 4))
  logps = [jax.nn.log_softmax(first)]
  for i in range(LI - 1):
    logits, cache = ar_sampler.step(params, setup.model, batch["image_tokens"][:, i], cache, i)
    logps.append(jax.nn.log_softmax(logits))
  logp = np.stack([np.asarray(l)[np.arange(4), batch["image_tokens"][:, i]]
                   for i, l in enumerate(logps)], axis=1)
  assert float(loss) == pytest.approx(-logp.mean(), abs=1e-6)
  np.testing.assert_allclose(np.asarray(bart.image_nll(params, batch, model=setup.model)),
                             -logp.sum(1), atol=1e-5)


def test_masked_text_masks_at_least_one_caption_token_and_never_padding():
  valid = np.arange(LT)[None] < np.array([0, 1, 3, 5] * 64)[:, None]
  masked = np.asarray(bart.mask_caption_tokens(jax.random.key(0), jnp.asarray(valid), 0.3))
  assert not np.any(masked & ~valid)
  counts = masked.sum(1)
  assert np.all(counts[valid.sum(1) > 0] >= 1) and np.all(counts[valid.sum(1) == 0] == 0)
  # Five tokens: each masked with probability 0.3, plus one when none was: 5 * 0.3 + 0.7 ** 5.
  five = np.asarray(bart.mask_caption_tokens(jax.random.key(1), jnp.ones((2048, 5), bool), 0.3))
  assert abs(five.sum(1).mean() - 1.668) < 0.06, five.sum(1).mean()


def test_bert_corruption_masks_replaces_and_keeps_the_selected_tokens():
  cfg = _setup().model_config
  text = jnp.asarray(np.random.default_rng(0).integers(4, VT, (4096, LT)), jnp.int32)
  valid = jnp.ones((4096, LT), bool)
  for corruption, want in (("bert", (0.8, 0.1 * (VT - 1) / VT, 0.1 + 0.1 / VT)),
                           ("mask", (1.0, 0.0, 0.0))):
    settings = bart.BartLoss(objective="masked_text", text_corruption=corruption)
    ids, selected = map(np.asarray, bart.corrupt_caption(jax.random.key(0), text, valid,
                                                         settings, cfg))
    text_np = np.asarray(text)
    assert np.array_equal(ids[~selected], text_np[~selected])  # Unselected: untouched.
    picked, orig = ids[selected], text_np[selected]
    shares = ((picked == cfg.text_mask_id).mean(),
              ((picked != cfg.text_mask_id) & (picked != orig)).mean(), (picked == orig).mean())
    np.testing.assert_allclose(shares, want, atol=0.015, err_msg=corruption)


def test_masked_text_pretrains_the_encoder_alone():
  setup = _setup("preln", num_layers=1, objective="masked_text", text_mask_rate=0.3)
  # Captions [a, a+1, a+2, ...]: a masked token follows from its neighbours.
  rng = np.random.default_rng(0)
  b = 32
  start = rng.integers(4, VT - LT, b)
  lengths = rng.integers(2, LT + 1, b)
  mask = np.arange(LT)[None] < lengths[:, None]
  batch = {**_batch(b=b), "text_mask": mask,
           "text_tokens": np.where(mask, start[:, None] + np.arange(LT)[None], 0)
           .astype(np.int32)}
  params = _params(setup, batch)
  loss_fn = setup.loss_fn()
  grads = jax.grad(lambda p: loss_fn(p, batch, jax.random.key(1), train=True, step=0)[0])(params)
  decoder = [name for name in bart.PARAM_GROUPS["decoder"] if name in grads]
  assert "decoder" in decoder and "image_head" in decoder
  for name in decoder:
    assert all(not np.any(np.asarray(g)) for g in jax.tree.leaves(grads[name])), name
  assert any(np.any(np.asarray(g)) for g in jax.tree.leaves(grads["encoder"]))
  opt = optax.adam(3e-3)

  @jax.jit
  def train(params):
    def step(carry, rng):
      params, opt_state = carry
      (loss, _), g = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, rng, train=True,
                                                               step=0)
      updates, opt_state = opt.update(g, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), loss
    (params, _), losses = jax.lax.scan(step, (params, opt.init(params)),
                                       jax.random.split(jax.random.key(2), 300))
    return params, losses

  params, losses = train(params)
  _, metrics = loss_fn(params, batch, jax.random.key(3), train=False, step=0)
  assert float(losses[-20:].mean()) < 0.2 * float(losses[:5].mean()), losses
  # (Chance is 1 / 24; a caption whose every token is masked cannot be recovered.)
  assert float(metrics["acc_text"]) > 0.8, metrics
  with pytest.raises(ValueError, match="masked_text needs a \\[MASK\\] token"):
    _setup(spec=dataclasses.replace(SPEC, text_mask_id=-1), objective="masked_text")
  with pytest.raises(ValueError, match="config.loss.objective='mlm'"):
    _setup(objective="mlm")
