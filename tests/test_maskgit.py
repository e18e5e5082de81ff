"""Tests for upgen/sampling/mask_schedule.py and upgen/sampling/maskgit.py."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from upgen.sampling import mask_schedule, maskgit

VOCAB = 6


@functools.partial(jax.jit, static_argnums=(0, 1))
def _all_counts(schedule, total_steps, n_N):
  """Keep-masked counts for every step: NxT."""
  steps_T = jnp.arange(total_steps)
  per_step = jax.vmap(lambda s: mask_schedule.num_to_keep_masked(schedule, s, total_steps, n_N))
  return per_step(steps_T).T


@pytest.mark.parametrize("schedule", mask_schedule.SCHEDULES)
def test_schedules_unmask_exact_counts(schedule):
  n_N = np.array([0, 1, 3, 5, 16, 100, 256])
  for total_steps in (1, 4, 12):
    keep_NxT = np.asarray(_all_counts(schedule, total_steps, n_N))
    before_NxT = np.concatenate([n_N[:, None], keep_NxT[:, :-1]], axis=1)
    unmasked_NxT = before_NxT - keep_NxT
    assert (keep_NxT[:, -1] == 0).all()  # The final step unmasks everything.
    np.testing.assert_array_equal(unmasked_NxT.sum(1), n_N)
    # At least one per step while any remain (with N < T the tail unmasks nothing).
    assert (unmasked_NxT >= np.minimum(before_NxT, 1)).all(), (schedule, total_steps, keep_NxT)
    assert (keep_NxT >= 0).all()


def test_schedule_follows_its_curve_when_unconstrained():
  keep = np.asarray(_all_counts("cosine", 8, np.array([1024])))[0]
  want = [math.floor(1024 * math.cos(math.pi / 2 * (s + 1) / 8)) for s in range(8)]
  np.testing.assert_array_equal(keep, want)
  keep = np.asarray(_all_counts("linear", 4, np.array([64])))[0]
  np.testing.assert_array_equal(keep, [48, 32, 16, 0])  # Float rounding does not lose a token.
  ratios = [float(mask_schedule.mask_ratio(s, 0.5, 64)) for s in mask_schedule.SCHEDULES]
  np.testing.assert_allclose(ratios, [math.cos(math.pi / 4), 0.5, 1 - math.sqrt(0.5), 0.75,
                                      1 - 64 ** -0.5], rtol=1e-6)
  with pytest.raises(ValueError, match="config.sample.schedule"):
    mask_schedule.check_schedule("bogus")


def _random_logits_fn(seed=0, vocab=VOCAB):
  """A token-dependent logits function (stands in for a model)."""
  table_VxV = jax.random.normal(jax.random.key(seed), (vocab + 1, vocab)) * 2.0

  def logits_fn(tokens_BxL):
    context_BxV = jnp.mean(table_VxV[tokens_BxL], axis=1)
    return table_VxV[tokens_BxL] + context_BxV[:, None, :]
  return logits_fn


def _decode(logits_fn, tokens, fixed, rng, **kw):
  run = jax.jit(lambda t, f, r: maskgit.decode(logits_fn, t, f, VOCAB, r, **kw))
  return np.asarray(run(tokens, fixed, rng))


def test_fixed_tokens_kept_and_no_mask_ids():
  rng_t, rng_f, rng = jax.random.split(jax.random.key(0), 3)
  tokens = jax.random.randint(rng_t, (4, 20), 0, VOCAB)
  fixed = jax.random.bernoulli(rng_f, 0.4, (4, 20)).at[0].set(False).at[1].set(True)
  out = _decode(_random_logits_fn(), tokens, fixed, rng, num_steps=5, schedule="cosine")
  assert out.dtype == np.int32 and out.shape == (4, 20)
  np.testing.assert_array_equal(out[np.asarray(fixed)], np.asarray(tokens)[np.asarray(fixed)])
  assert ((out >= 0) & (out < VOCAB)).all()


def test_mask_id_inside_vocab_is_never_sampled():
  def prefers_mask(tokens_BxL):  # Vocabulary VOCAB + 1 with the mask id the top choice.
    return jnp.broadcast_to(jnp.arange(VOCAB + 1.0) * 3.0, tokens_BxL.shape + (VOCAB + 1,))
  out = _decode(prefers_mask, jnp.zeros((2, 9), jnp.int32), jnp.zeros((2, 9), bool),
                jax.random.key(1), num_steps=3)
  assert (out != VOCAB).all()


def test_least_confident_positions_stay_masked():
  # The prediction at each position is "how many positions are masked now", with a
  # position-dependent sharpness; greedy decoding over 2 linear steps of 4 tokens fixes the
  # 2 sharpest (most confident) positions first (value 4), the others after (value 2).
  sharpness_L = jnp.array([3.0, 1.0, 4.0, 2.0])

  def logits_fn(tokens_BxL):
    masked_B = jnp.sum(tokens_BxL == VOCAB, axis=1)
    peak_BxV = -jnp.abs(jnp.arange(VOCAB)[None] - masked_B[:, None]).astype(jnp.float32)
    return peak_BxV[:, None, :] * sharpness_L[None, :, None]

  out = _decode(logits_fn, jnp.zeros((1, 4), jnp.int32), jnp.zeros((1, 4), bool),
                jax.random.key(0), num_steps=2, schedule="linear", temperature=0.0,
                choice_temperature=0.0)
  np.testing.assert_array_equal(out, [[4, 2, 4, 2]])


def test_greedy_decoding_recovers_target():
  target = jax.random.randint(jax.random.key(3), (3, 16), 0, VOCAB)
  logits_fn = lambda t: jax.nn.one_hot(target, VOCAB) * 5.0
  for schedule in ("cosine", "exp"):
    out = _decode(logits_fn, jnp.zeros_like(target), jnp.zeros(target.shape, bool),
                  jax.random.key(0), num_steps=4, schedule=schedule, temperature=0.0)
    np.testing.assert_array_equal(out, target)


def test_guidance_scale_zero_is_bit_exact_and_guidance_applies():
  cond_fn = _random_logits_fn(0)
  uncond_fn = _random_logits_fn(1)
  guided = lambda t: (cond_fn(t), uncond_fn(t))
  tokens, fixed = jnp.zeros((3, 12), jnp.int32), jnp.zeros((3, 12), bool)
  kw = dict(num_steps=4, temperature=1.0, choice_temperature=2.0)
  plain = _decode(cond_fn, tokens, fixed, jax.random.key(5), **kw)
  zero = _decode(cond_fn, tokens, fixed, jax.random.key(5), guidance_scale=0.0,
                 guided_logits_fn=guided, **kw)
  np.testing.assert_array_equal(plain, zero)
  strong = _decode(cond_fn, tokens, fixed, jax.random.key(5), guidance_scale=3.0,
                   guided_logits_fn=guided, **kw)
  assert (strong != plain).any()
  # Greedy and deterministic: guidance flips the argmax from token 1 to token 2.
  cond = jnp.broadcast_to(jnp.array([0.0, 1.0, 0.9, 0, 0, 0]), (1, 3, VOCAB))
  uncond = jnp.broadcast_to(jnp.array([0.0, 2.0, 0.0, 0, 0, 0]), (1, 3, VOCAB))
  greedy = dict(num_steps=2, temperature=0.0, choice_temperature=0.0)
  t0, f0 = jnp.zeros((1, 3), jnp.int32), jnp.zeros((1, 3), bool)
  out = _decode(lambda t: cond, t0, f0, jax.random.key(0), guidance_scale=1.0,
                guided_logits_fn=lambda t: (cond, uncond), **greedy)
  np.testing.assert_array_equal(out, [[2, 2, 2]])
  np.testing.assert_array_equal(_decode(lambda t: cond, t0, f0, jax.random.key(0), **greedy),
                                [[1, 1, 1]])
  with pytest.raises(ValueError, match="guided_logits_fn"):
    maskgit.decode(cond_fn, t0, f0, VOCAB, jax.random.key(0), 2, guidance_scale=1.0)


def test_linear_temperature_schedule_sharpens_late_steps():
  """Fixed logits with p(token 0) = 0.6, p(token 1) = 0.4 at every position. At a constant
  temperature 1 the decoded tokens follow that law; with the linear schedule the steps that
  decode most tokens (cosine schedule: the late ones) sample at temperature ~1/N, so token 0
  dominates. A one-step linear schedule is the constant one."""
  logp_V = jnp.log(jnp.array([0.6, 0.4] + [1e-9] * (VOCAB - 2)))
  logits_fn = lambda tokens_BxL: jnp.broadcast_to(logp_V, tokens_BxL.shape + (VOCAB,))
  tokens = jnp.zeros((64, 64), jnp.int32)
  fixed = jnp.zeros((64, 64), bool)
  # Confidence noise that swamps the log-probs: positions are kept in random order, so
  # which positions are decoded does not depend on the token they drew.
  kw = dict(num_steps=12, schedule="cosine", temperature=1.0, choice_temperature=1e6)
  constant = _decode(logits_fn, tokens, fixed, jax.random.key(0), **kw)
  linear = _decode(logits_fn, tokens, fixed, jax.random.key(0), temperature_schedule="linear",
                   **kw)
  assert abs(np.mean(constant == 0) - 0.6) < 0.03
  # Expected share of token 0: each step's decoded count times p0 at that step's temperature.
  keep_T = np.asarray(_all_counts("cosine", 12, np.array([64])))[0]
  decoded_T = np.concatenate([[64], keep_T[:-1]]) - keep_T
  t_T = 1.0 - np.arange(12) / 12
  p0_T = 0.6 ** (1 / t_T) / (0.6 ** (1 / t_T) + 0.4 ** (1 / t_T))
  want = float(np.sum(decoded_T * p0_T) / 64)
  assert want > 0.7 and abs(np.mean(linear == 0) - want) < 0.03, want
  one = dict(kw, num_steps=1)
  np.testing.assert_array_equal(
      _decode(logits_fn, tokens, fixed, jax.random.key(1), **one),
      _decode(logits_fn, tokens, fixed, jax.random.key(1), temperature_schedule="linear", **one))
  with pytest.raises(ValueError, match="temperature_schedule"):
    _decode(logits_fn, tokens, fixed, jax.random.key(1), temperature_schedule="cosine", **kw)
