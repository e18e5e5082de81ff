"""MaskGIT mask schedules: the fraction of tokens still masked as decoding progresses.

`mask_ratio(schedule, progress)` is the fraction masked after a fraction `progress` in [0, 1]
of the decoding steps (1 at the start, 0 at the end), with the MaskGIT schedule names:

  cosine  cos(pi/2 t)        linear  1 - t         sqrt  1 - sqrt(t)
  square  1 - t^2            exp     1 - N^-(1-t)  (N = tokens unknown at the start)

`num_to_keep_masked` turns a schedule into exact integer counts per step.
"""
from __future__ import annotations

import math
from typing import Optional

import jax
import jax.numpy as jnp

from upgen import errors

SCHEDULES = ("cosine", "linear", "sqrt", "square", "exp")


def check_schedule(schedule: str, key: str = "config.sample.schedule") -> str:
  if schedule not in SCHEDULES:
    raise errors.ConfigError(f"{key}={schedule!r}: choose one of {SCHEDULES}")
  return schedule


def mask_ratio(schedule: str, progress, num_unknown: Optional[jax.Array] = None) -> jax.Array:
  """Fraction still masked at `progress` in [0, 1]; "exp" needs `num_unknown` (N)."""
  t = jnp.clip(jnp.asarray(progress, jnp.float32), 0.0, 1.0)
  check_schedule(schedule)
  if schedule == "cosine":
    ratio = jnp.cos(math.pi / 2.0 * t)
  elif schedule == "linear":
    ratio = 1.0 - t
  elif schedule == "sqrt":
    ratio = 1.0 - jnp.sqrt(t)
  elif schedule == "square":
    ratio = 1.0 - t ** 2
  else:
    if num_unknown is None:
      raise ValueError("mask schedule 'exp' needs num_unknown")
    n = jnp.maximum(jnp.asarray(num_unknown, jnp.float32), 1.0)
    ratio = 1.0 - n ** (-(1.0 - t))
  return jnp.clip(ratio, 0.0, 1.0)


def num_to_keep_masked(schedule: str, step, total_steps: int, num_unknown_at_start) -> jax.Array:
  """Tokens still masked after 0-based `step` of `total_steps` (int32, shaped like N).

  Starts from f_s = floor(N * mask_ratio((s + 1) / T)) and enforces, exactly:
  every step unmasks at least one token while any remain (keep_s <= keep_{s-1} - 1, with
  keep_{-1} = N), counts never go below 0, and the final step unmasks everything. The
  closed form keep_t = min_{-1 <= s <= t} (f_s + s) - t (f_{-1} = N) works for a traced `step`.
  """
  if total_steps < 1:
    raise errors.ConfigError(
        f"config.sample.num_steps={total_steps}: need at least 1 decoding step")
  n = jnp.asarray(num_unknown_at_start, jnp.int32)
  step = jnp.asarray(step, jnp.int32)
  s_T = jnp.arange(total_steps, dtype=jnp.int32)
  progress_T = (s_T + 1).astype(jnp.float32) / total_steps
  ratio_NxT = mask_ratio(schedule, progress_T, n[..., None])
  # The small offset absorbs float32 rounding of N * ratio (e.g. 7.9999995 -> 8).
  f_NxT = jnp.floor(n[..., None].astype(jnp.float32) * ratio_NxT + 1e-3).astype(jnp.int32)
  f_NxT = jnp.minimum(f_NxT, n[..., None])
  candidates_NxT = jnp.where(s_T <= step, f_NxT + s_T, jnp.iinfo(jnp.int32).max)
  keep = jnp.minimum(jnp.min(candidates_NxT, axis=-1), n - 1) - step
  keep = jnp.maximum(keep, 0)
  return jnp.where(step >= total_steps - 1, 0, keep)
