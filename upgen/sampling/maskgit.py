"""MaskGIT parallel decoding (Chang et al. 2022) with classifier-free guidance.

`decode` starts with every non-fixed position set to `mask_id` and runs `num_steps` steps in
one `lax.fori_loop` (trace it under `jax.jit`; `upgen_sampler` does). Each step:

  1. logits for the current tokens (guided: (1 + s) * cond - s * uncond),
  2. sample every still-masked position (temperature; 0 = argmax; with
     temperature_schedule="linear" it falls as temperature * (1 - step / num_steps)),
  3. confidence = log-prob of the sampled token + Gumbel noise scaled by
     choice_temperature * (1 - (step + 1) / num_steps); fixed and already decoded
     positions get +inf,
  4. re-mask the `num_to_keep_masked` least confident positions.

The last step leaves nothing masked, and `mask_id` itself is never sampled.
"""
from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from upgen import errors
from upgen.sampling import mask_schedule

TEMPERATURE_SCHEDULES = ("constant", "linear")

# tokens_BxL -> logits_BxLxV.
LogitsFn = Callable[[jax.Array], jax.Array]
# tokens_BxL -> (cond_logits_BxLxV, uncond_logits_BxLxV), ideally from one batched forward.
GuidedLogitsFn = Callable[[jax.Array], tuple[jax.Array, jax.Array]]


def check_temperature_schedule(name: str, key: str = "config.sample.temperature_schedule") -> str:
  if name not in TEMPERATURE_SCHEDULES:
    raise errors.ConfigError(f"{key}={name!r}: choose one of {TEMPERATURE_SCHEDULES}")
  return name


def guide(cond_BxLxV: jax.Array, uncond_BxLxV: jax.Array, scale: float) -> jax.Array:
  """Classifier-free guidance: (1 + s) * cond - s * uncond."""
  return (1.0 + scale) * cond_BxLxV - scale * uncond_BxLxV


def rank_BxL(values_BxL: jax.Array) -> jax.Array:
  """Rank of each entry within its row (0 = smallest; ties broken by position): one stable
  sort, then its inverse permutation by a scatter (a second argsort would sort again)."""
  order_BxL = jnp.argsort(values_BxL, axis=-1, stable=True)
  rows_Bx1 = jnp.arange(values_BxL.shape[0])[:, None]
  ranks_L = jnp.broadcast_to(jnp.arange(values_BxL.shape[-1], dtype=order_BxL.dtype),
                             values_BxL.shape)
  return jnp.zeros_like(order_BxL).at[rows_Bx1, order_BxL].set(ranks_L, unique_indices=True)


def gumbel_like(rng: jax.Array, x: jax.Array) -> jax.Array:
  """Standard Gumbel noise shaped like `x`, drawn flat and reshaped (XLA:CPU compiles the
  partitionable threefry of multi-dimensional shapes several times slower)."""
  return jax.random.gumbel(rng, (int(np.prod(x.shape)),)).reshape(x.shape)


def _step_logits(logits_fn: LogitsFn, guided_logits_fn: Optional[GuidedLogitsFn],
                 guidance_scale: float, tokens_BxL: jax.Array, mask_id: int) -> jax.Array:
  if guidance_scale == 0.0:
    logits_BxLxV = logits_fn(tokens_BxL)
  else:
    cond_BxLxV, uncond_BxLxV = guided_logits_fn(tokens_BxL)
    logits_BxLxV = guide(cond_BxLxV, uncond_BxLxV, guidance_scale)
  logits_BxLxV = logits_BxLxV.astype(jnp.float32)
  if mask_id < logits_BxLxV.shape[-1]:  # The vocabulary contains the mask token: never emit it.
    logits_BxLxV = logits_BxLxV.at[..., mask_id].set(-jnp.inf)
  return logits_BxLxV


def decode(logits_fn: LogitsFn, tokens_BxL: jax.Array, fixed_BxL: jax.Array, mask_id: int,
           rng: jax.Array, num_steps: int, schedule: str = "cosine", temperature: float = 1.0,
           choice_temperature: float = 4.5, guidance_scale: float = 0.0,
           guided_logits_fn: Optional[GuidedLogitsFn] = None,
           temperature_schedule: str = "constant") -> jax.Array:
  """Decodes every position where `fixed_BxL` is False; returns int32 tokens BxL.

  Fixed positions keep their input value. `guidance_scale`, `num_steps`, `schedule` and
  the temperatures are Python numbers (static under jit). With `guidance_scale` 0 only
  `logits_fn` runs, so the result equals the unguided sampler bit for bit; otherwise
  `guided_logits_fn` supplies (cond, uncond) logits.
  """
  mask_schedule.check_schedule(schedule)
  guidance_scale = float(guidance_scale)
  if guidance_scale != 0.0 and guided_logits_fn is None:
    raise ValueError(f"guidance_scale={guidance_scale} needs guided_logits_fn")
  if temperature < 0 or choice_temperature < 0:
    raise ValueError(f"temperature={temperature} and choice_temperature={choice_temperature} "
                     "must be >= 0")
  check_temperature_schedule(temperature_schedule)
  fixed_BxL = fixed_BxL.astype(bool)
  tokens_BxL = jnp.where(fixed_BxL, tokens_BxL.astype(jnp.int32), mask_id)
  num_unknown_B = jnp.sum(~fixed_BxL, axis=-1).astype(jnp.int32)

  def step(i, state):
    tokens_BxL, rng = state
    rng, sample_rng, choice_rng = jax.random.split(rng, 3)
    logits_BxLxV = _step_logits(logits_fn, guided_logits_fn, guidance_scale, tokens_BxL, mask_id)
    if temperature > 0:
      # Linear: the first step samples at `temperature`, the last at temperature / num_steps.
      t = temperature * (1.0 - i / num_steps) if temperature_schedule == "linear" else temperature
      logits_BxLxV = logits_BxLxV / t
      # Gumbel-max: the same distribution as jax.random.categorical.
      sampled_BxL = jnp.argmax(logits_BxLxV + gumbel_like(sample_rng, logits_BxLxV), axis=-1)
    else:
      sampled_BxL = jnp.argmax(logits_BxLxV, axis=-1)
    unknown_BxL = (tokens_BxL == mask_id) & ~fixed_BxL
    sampled_BxL = jnp.where(unknown_BxL, sampled_BxL.astype(jnp.int32), tokens_BxL)
    logp_BxLxV = jax.nn.log_softmax(logits_BxLxV, axis=-1)
    logp_BxL = jnp.take_along_axis(logp_BxLxV, sampled_BxL[..., None], axis=-1)[..., 0]
    anneal = choice_temperature * (1.0 - (i + 1) / num_steps)
    confidence_BxL = logp_BxL + anneal * gumbel_like(choice_rng, logp_BxL)
    confidence_BxL = jnp.where(unknown_BxL, confidence_BxL, jnp.inf)
    keep_B = mask_schedule.num_to_keep_masked(schedule, i, num_steps, num_unknown_B)
    remask_BxL = rank_BxL(confidence_BxL) < keep_B[:, None]
    return jnp.where(remask_BxL, mask_id, sampled_BxL), rng

  tokens_BxL, _ = jax.lax.fori_loop(0, num_steps, step, (tokens_BxL, rng))
  return tokens_BxL
