"""Autoregressive decoding over a KV cache: temperature, top-k, top-p and classifier-free
guidance, for any family that can prefill a prompt and then take one token at a time.

The family prefills its prompts into a cache (its own business: prompt layout, positions)
and hands `decode` the logits of the first new token. `decode` then samples one token per
step inside `lax.scan` and feeds it back through the family's cached `step_fn`:

  step_fn(tokens_R, cache, i) -> (logits_RxV, cache)

feeds generated token i (0-based) of every row and returns the logits of token i + 1.
Trace `decode` under `jax.jit` (the DALL-E sampler does); `num_tokens` and the sampling
settings are Python numbers, static under jit.

Classifier-free guidance ("super-conditioning", Crowson; DALL-E mini): with guidance scale
s != 0 the family runs R = 2B rows, the conditional stream in rows [0, B) and the
unconditional one in rows [B, 2B), in one batch. Each step mixes them as
(1 + s) * cond - s * uncond (`maskgit.guide`, the same convention as the MaskGIT sampler;
DALL-E mini's scale is 1 + s), samples B tokens, and feeds the same token to both streams.
With s == 0 only B rows exist and no mixing code runs, so guidance scale 0 is the unguided
sampler bit for bit.

Cache trees: `repeat_rows` / `take_rows` act on the batch axis of every cache leaf
(`batch_axis` 0 for unrolled layers, 1 under `nn.scan`, whose leaves have a leading layer
axis); leaves with no such axis (the cache index) are shared by all rows and left alone.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from upgen.sampling import maskgit

# (tokens_R int32, cache, i) -> (logits_RxV, cache).
StepFn = Callable[[jax.Array, Any, jax.Array], tuple[jax.Array, Any]]


def _map_rows(fn: Callable[[jax.Array, int], jax.Array], tree: Any, batch_axis: int) -> Any:
  return jax.tree.map(lambda x: fn(x, batch_axis) if x.ndim > batch_axis else x, tree)


def repeat_rows(tree: Any, n: int, batch_axis: int = 0) -> Any:
  """Each row n times in a row: rows [a, b] -> [a, a, b, b] (n = 2)."""
  return _map_rows(lambda x, ax: jnp.repeat(x, n, axis=ax), tree, batch_axis)


def take_rows(tree: Any, rows_R: jax.Array, batch_axis: int = 0) -> Any:
  """Rows `rows_R` of every leaf (beam reordering)."""
  return _map_rows(lambda x, ax: jnp.take(x, rows_R, axis=ax), tree, batch_axis)


def guided_logits(logits_RxV: jax.Array, guidance_scale: float) -> jax.Array:
  """R = B rows unguided; R = 2B rows [cond; uncond] mixed into B rows when guided."""
  logits_RxV = logits_RxV.astype(jnp.float32)
  if guidance_scale == 0.0:
    return logits_RxV
  cond_BxV, uncond_BxV = jnp.split(logits_RxV, 2, axis=0)
  return maskgit.guide(cond_BxV, uncond_BxV, guidance_scale)


def feed(tokens_B: jax.Array, guidance_scale: float) -> jax.Array:
  """The tokens both streams receive: B rows, or 2B (the same token twice) when guided."""
  if guidance_scale == 0.0:
    return tokens_B
  return jnp.concatenate([tokens_B, tokens_B], axis=0)


def filter_logits(logits_BxV: jax.Array, top_k: int = 0, top_p: float = 1.0) -> jax.Array:
  """-inf outside the top_k largest logits (0 = all) and outside the nucleus: the smallest
  set of most likely tokens whose probability reaches top_p (1 = all; the top token always
  stays). top_k keeps exactly the indices lax.top_k returns, so ties cannot let a second
  token through and top_k = 1 is argmax."""
  neg_inf = jnp.finfo(jnp.float32).min
  if 0 < top_k < logits_BxV.shape[-1]:
    _, keep_BxK = jax.lax.top_k(logits_BxV, top_k)
    kept_BxV = jnp.zeros(logits_BxV.shape, bool).at[
        jnp.arange(logits_BxV.shape[0])[:, None], keep_BxK].set(True)
    logits_BxV = jnp.where(kept_BxV, logits_BxV, neg_inf)
  if top_p < 1.0:
    sorted_BxV = -jnp.sort(-logits_BxV, axis=-1)
    probs_BxV = jax.nn.softmax(sorted_BxV, axis=-1)
    before_BxV = jnp.cumsum(probs_BxV, axis=-1) - probs_BxV  # Mass of the more likely tokens.
    cutoff_Bx1 = jnp.min(jnp.where(before_BxV < top_p, sorted_BxV, jnp.inf), axis=-1,
                         keepdims=True)
    logits_BxV = jnp.where(logits_BxV < cutoff_Bx1, neg_inf, logits_BxV)
  return logits_BxV


def sample_tokens(rng: jax.Array, logits_BxV: jax.Array, temperature: float = 1.0,
                  top_k: int = 0, top_p: float = 1.0) -> jax.Array:
  """int32 tokens B: argmax at temperature 0, else a draw from softmax(logits / T) restricted
  by `filter_logits` (Gumbel-max, the same distribution as jax.random.categorical)."""
  if temperature == 0.0:
    return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
  logits_BxV = filter_logits(logits_BxV.astype(jnp.float32) / temperature, top_k, top_p)
  noisy_BxV = logits_BxV + maskgit.gumbel_like(rng, logits_BxV)
  return jnp.argmax(noisy_BxV, axis=-1).astype(jnp.int32)


def decode(step_fn: StepFn, logits_RxV: jax.Array, cache: Any, num_tokens: int, rng: jax.Array,
           *, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
           guidance_scale: float = 0.0, given_BxN: Optional[jax.Array] = None,
           known_BxN: Optional[jax.Array] = None) -> jax.Array:
  """Samples `num_tokens` tokens per row: int32 BxN.

  `logits_RxV` / `cache` come from the family's prefill (R = B, or 2B with guidance, see the
  module docstring). Token i is drawn with fold_in(rng, i); `step_fn` runs num_tokens - 1
  times (the last token is never fed back, so the cache needs no slot for it). Where
  `known_BxN` is True the token is `given_BxN` instead of a draw, and that token is fed
  back (inpainting in raster order: a token sees the known tokens before it, not after).
  Settings are Python numbers, checked by SampleSettings.
  """
  guidance_scale = float(guidance_scale)

  def choose(logits_RxV, i):
    tokens_B = sample_tokens(jax.random.fold_in(rng, i),
                             guided_logits(logits_RxV, guidance_scale), temperature, top_k, top_p)
    if known_BxN is None:
      return tokens_B
    return jnp.where(known_BxN[:, i], given_BxN[:, i].astype(jnp.int32), tokens_B)

  def body(carry, i):
    logits_RxV, cache = carry
    tokens_B = choose(logits_RxV, i)
    logits_RxV, cache = step_fn(feed(tokens_B, guidance_scale), cache, i)
    return (logits_RxV, cache), tokens_B

  (logits_RxV, _), tokens_NxB = jax.lax.scan(body, (logits_RxV, cache),
                                             jnp.arange(num_tokens - 1))
  last_B = choose(logits_RxV, num_tokens - 1)
  return jnp.concatenate([tokens_NxB.T, last_B[:, None]], axis=1)
