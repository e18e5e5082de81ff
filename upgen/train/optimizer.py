"""AdamW with linear warmup, cosine, linear (or constant) decay and global-norm clipping,
and frozen parameter groups (config.optim.freeze)."""
from __future__ import annotations

from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import optax

from upgen import errors
from upgen import families


def learning_rate_schedule(optim: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  warmup = max(int(optim.warmup_steps), 0)
  peak = float(optim.lr)
  if optim.decay == "constant":
    after = optax.constant_schedule(peak)
  elif optim.decay == "cosine":
    decay_steps = max(int(total_steps) - warmup, 1)
    after = optax.cosine_decay_schedule(peak, decay_steps, alpha=float(optim.final_lr_frac))
  elif optim.decay == "linear":  # DALL-E mini's: warmup, then straight down.
    decay_steps = max(int(total_steps) - warmup, 1)
    after = optax.linear_schedule(peak, peak * float(optim.final_lr_frac), decay_steps)
  else:
    raise errors.ConfigError(f"config.optim.decay={optim.decay!r}: expected 'cosine', "
                             "'linear' or 'constant'")
  if warmup == 0:
    return after
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), after], [warmup])


def _decay_mask(params):
  """Weight decay on matrices and conv kernels only, not on biases, norms or scalars."""
  return jax.tree.map(lambda p: jnp.ndim(p) >= 2, params)


def make_optimizer(optim: ml_collections.ConfigDict, total_steps: int,
                   groups: Mapping[str, Sequence[str]] = {}) -> optax.GradientTransformation:
  """Clip, then AdamW on every parameter outside the frozen groups; frozen parameters get a
  zero update (no weight decay either), so they stay bit-identical."""
  schedule = learning_rate_schedule(optim, total_steps)
  parts = []
  if optim.grad_clip and optim.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(float(optim.grad_clip)))
  parts.append(
      optax.adamw(
          schedule, b1=float(optim.b1), b2=float(optim.b2), eps=float(optim.eps),
          weight_decay=float(optim.weight_decay), mask=_decay_mask))
  train = optax.chain(*parts)
  frozen = families.group_members("config.optim.freeze", optim.get("freeze", ""), groups)
  if not frozen:
    return train

  def labels(params):
    return {name: jax.tree.map(lambda _, n=name: "frozen" if n in frozen else "train", sub)
            for name, sub in params.items()}

  return optax.multi_transform({"train": train, "frozen": optax.set_to_zero()}, labels)
