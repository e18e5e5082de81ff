"""Cross-entropy of an output head (`layers.Unembed`) without the whole batch's logits.

At the large configs' shapes a head's float32 logits are B x L x V x 4 bytes (64 x 320 x
32768 x 4 = 2.7 GB), written, read by the softmax, kept for the backward pass and read again,
although UPGen's loss reads only its masked positions. Two switches, both exact (the same
loss and gradients within float tolerance, tests/test_head_loss.py):

- `capacity` (config.loss.logits_capacity, UPGen): the head runs only on the positions the
  loss reads, gathered into a buffer of ceil(capacity x B x L) rows. A batch that reads more
  positions than that takes the every-position path instead (`lax.cond`), so the loss never
  depends on the setting; only the speed does.
- `chunks` (config.loss.logits_chunks): the rows are split into this many interleaved
  chunks and scanned; each chunk's logits are recomputed in the backward pass
  (`jax.checkpoint`), so one chunk's float32 logits are alive at a time. Chunk c holds rows
  c, c + chunks, ..., so every chunk spans the whole batch (and every device of a
  batch-sharded array).

The logits are computed exactly as `Unembed` computes them: inputs, kernel and bias in the
compute dtype, the padded vocabulary columns sliced off, then float32.
"""
from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import optax


def unembed_params(params: dict, name: str) -> dict:
  """The kernel and bias of the `layers.Unembed` submodule `name` in `params`."""
  return params[name]["Dense_0"]


def _logits_ce(x_NxE, head: dict, labels_N, vocab_size: int, dtype: Any):
  logits_NxP = (jnp.dot(x_NxE.astype(dtype), head["kernel"].astype(dtype))
                + head["bias"].astype(dtype))
  logits_NxV = logits_NxP[:, :vocab_size].astype(jnp.float32)
  ce_N = optax.softmax_cross_entropy_with_integer_labels(logits_NxV, labels_N)
  return ce_N, jnp.argmax(logits_NxV, -1) == labels_N


def cross_entropy(x_NxE: jax.Array, head: dict, labels_N: jax.Array, *, vocab_size: int,
                  dtype: Any, chunks: int = 1) -> tuple[jax.Array, jax.Array]:
  """Per row: (cross-entropy float32, argmax == label) of the head's logits."""
  if chunks <= 1:
    return _logits_ce(x_NxE, head, labels_N, vocab_size, dtype)
  n, e = x_NxE.shape
  per = -(-n // chunks)
  pad = per * chunks - n
  x_PxCxE = jnp.pad(x_NxE, ((0, pad), (0, 0))).reshape(per, chunks, e)
  labels_PxC = jnp.pad(labels_N, (0, pad)).reshape(per, chunks)

  @jax.checkpoint
  def chunk(args):
    return _logits_ce(args[0], head, args[1], vocab_size, dtype)

  ce_CxP, correct_CxP = jax.lax.map(chunk, (x_PxCxE.swapaxes(0, 1), labels_PxC.T))
  return ce_CxP.T.reshape(-1)[:n], correct_CxP.T.reshape(-1)[:n]


def masked_cross_entropy(x_BxLxE: jax.Array, head: dict, labels_BxL: jax.Array,
                         where_BxL: jax.Array, *, vocab_size: int, dtype: Any,
                         capacity: float = 0.0, chunks: int = 1
                         ) -> tuple[jax.Array, jax.Array]:
  """(ce_BxL, correct_BxL) at the positions `where_BxL` (0 and False elsewhere); with
  capacity > 0 the head runs on those positions only (see the module docstring)."""
  b, l, e = x_BxLxE.shape
  n = b * l
  x_NxE = x_BxLxE.reshape(n, e)
  labels_N = labels_BxL.reshape(n)
  where_N = jnp.asarray(where_BxL, bool).reshape(n)
  ce = lambda x, y: cross_entropy(x, head, y, vocab_size=vocab_size, dtype=dtype, chunks=chunks)

  def every_position():
    ce_N, correct_N = ce(x_NxE, labels_N)
    return jnp.where(where_N, ce_N, 0.0), correct_N & where_N

  if capacity <= 0:
    ce_N, correct_N = every_position()
  else:
    rows = min(n, max(1, math.ceil(capacity * n)))
    count = jnp.sum(where_N)

    def gathered():
      idx_C = jnp.nonzero(where_N, size=rows, fill_value=0)[0]
      kept_C = jnp.arange(rows) < count
      ce_C, correct_C = ce(x_NxE[idx_C], labels_N[idx_C])
      ce_N = jnp.zeros(n, jnp.float32).at[idx_C].add(jnp.where(kept_C, ce_C, 0.0))
      correct_N = jnp.zeros(n, bool).at[idx_C].max(kept_C & correct_C)
      return ce_N, correct_N

    ce_N, correct_N = jax.lax.cond(count <= rows, gathered, every_position)
  return ce_N.reshape(b, l), correct_N.reshape(b, l)
