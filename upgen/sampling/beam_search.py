"""Beam search over a cached step function (fixed-length outputs, e.g. an image's tokens).

Same contract as `autoregressive.decode`: the family prefills B prompts (2B rows
[cond; uncond] with classifier-free guidance) and passes the first logits, the cache and
`step_fn(tokens_R, cache, i) -> (logits_RxV, cache)`. Nothing here knows what the tokens
mean, so an encoder-decoder family reuses it by prefilling its decoder the same way.

Every output has exactly `num_tokens` tokens (there is no end token to stop at), so beams
are compared by their summed log-probability with no length penalty. A beam's score is the
sum of log_softmax of the (guided) logits, the distribution that sampling at temperature 1
draws from; beam size 1 is greedy decoding, and a beam of V^(N-1) keeps every prefix, which
makes the search exhaustive.

Layout: beam k of prompt b lives in cache row b * K + k (and B*K + b*K + k for its
unconditional twin); after each step the surviving beams' rows are gathered from their
parents with `autoregressive.take_rows`.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from upgen.sampling import autoregressive
from upgen.sampling.autoregressive import StepFn


def _extend(logits_RxV, scores_BxK, seqs_BxKxN, i, guidance_scale):
  """Best K one-token extensions of the K beams: (scores, seqs, parent beams, new tokens)."""
  b, k = scores_BxK.shape
  logp_BKxV = jax.nn.log_softmax(autoregressive.guided_logits(logits_RxV, guidance_scale), -1)
  v = logp_BKxV.shape[-1]
  total_BxKxV = scores_BxK[:, :, None] + logp_BKxV.reshape(b, k, v)
  scores_BxK, flat_BxK = jax.lax.top_k(total_BxKxV.reshape(b, k * v), k)
  parent_BxK, token_BxK = flat_BxK // v, (flat_BxK % v).astype(jnp.int32)
  seqs_BxKxN = jnp.take_along_axis(seqs_BxKxN, parent_BxK[:, :, None], axis=1)
  seqs_BxKxN = seqs_BxKxN.at[:, :, i].set(token_BxK)
  return scores_BxK, seqs_BxKxN, parent_BxK, token_BxK


def beam_search(step_fn: StepFn, logits_RxV: jax.Array, cache: Any, num_tokens: int,
                beam_size: int, *, guidance_scale: float = 0.0, batch_axis: int = 0
                ) -> tuple[jax.Array, jax.Array]:
  """The most likely sequence found per prompt: (int32 tokens BxN, its log-probability B).

  `batch_axis` is the row axis of the cache leaves (see `autoregressive.repeat_rows`).
  """
  if beam_size < 1:
    raise ValueError(f"beam_size={beam_size}: must be >= 1")
  guidance_scale = float(guidance_scale)
  k = int(beam_size)
  streams = 1 if guidance_scale == 0.0 else 2
  b = logits_RxV.shape[0] // streams
  logits_RxV = autoregressive.repeat_rows(logits_RxV, k)
  cache = autoregressive.repeat_rows(cache, k, batch_axis)
  # Only beam 0 is live at the start, so the first step does not pick one token K times.
  scores_BxK = jnp.where(jnp.arange(k) == 0, 0.0, -jnp.inf)[None].repeat(b, axis=0)
  seqs_BxKxN = jnp.zeros((b, k, num_tokens), jnp.int32)

  def body(carry, i):
    logits_RxV, cache, scores_BxK, seqs_BxKxN = carry
    scores_BxK, seqs_BxKxN, parent_BxK, token_BxK = _extend(
        logits_RxV, scores_BxK, seqs_BxKxN, i, guidance_scale)
    rows_BK = (jnp.arange(b)[:, None] * k + parent_BxK).reshape(-1)
    if streams == 2:
      rows_BK = jnp.concatenate([rows_BK, rows_BK + b * k])
    cache = autoregressive.take_rows(cache, rows_BK, batch_axis)
    logits_RxV, cache = step_fn(autoregressive.feed(token_BxK.reshape(-1), guidance_scale),
                                cache, i)
    return (logits_RxV, cache, scores_BxK, seqs_BxKxN), None

  (logits_RxV, _, scores_BxK, seqs_BxKxN), _ = jax.lax.scan(
      body, (logits_RxV, cache, scores_BxK, seqs_BxKxN), jnp.arange(num_tokens - 1))
  scores_BxK, seqs_BxKxN, _, _ = _extend(logits_RxV, scores_BxK, seqs_BxKxN, num_tokens - 1,
                                         guidance_scale)
  return seqs_BxKxN[:, 0], scores_BxK[:, 0]  # lax.top_k sorts: beam 0 is the best.
