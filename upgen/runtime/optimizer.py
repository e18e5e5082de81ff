"""AdamW with linear warmup, cosine, linear (or constant) decay and global-norm clipping,
and frozen parameter groups (config.optim.freeze)."""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import optax

from upgen import errors
from upgen import families
from upgen.runtime import param_groups


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


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformationExtraArgs:
  """optax.clip_by_global_norm, taking the norm from the caller when it has one.

  train_step computes the gradients' global norm anyway (a metric and the non-finite
  guard) and passes it as the extra argument `grad_norm`; without it (a caller that passes
  none) the norm is computed here, as optax does. Either way the updates are optax's:
  unchanged below `max_norm`, else scaled by max_norm / norm.
  """

  def update(updates, state, params=None, *, grad_norm=None, **extra_args):
    del params, extra_args
    g_norm = optax.tree.norm(updates) if grad_norm is None else grad_norm
    trigger = jnp.squeeze(g_norm < max_norm)
    clip = lambda t: jax.lax.select(trigger, t, (t / g_norm.astype(t.dtype)) * max_norm)
    return jax.tree.map(clip, updates), state

  return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update)


def zero_rows(rows: Callable[[Any], Any]) -> optax.GradientTransformation:
  """Zero update for the first N rows of the leaves `rows(params)` maps to N (0: none)."""

  def update(updates, state, params=None):
    del params
    counts = rows(updates)
    return jax.tree.map(lambda u, n: u.at[:n].set(0) if n else u, updates, counts), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(optim: ml_collections.ConfigDict, total_steps: int,
                   groups: Mapping[str, Sequence[str]] = {}) -> optax.GradientTransformation:
  """Clip, then AdamW on every parameter outside the frozen groups; frozen parameters (and
  frozen leading rows of a table) get a zero update (no weight decay either), so they stay
  bit-identical. A frozen group that holds none of the model's parameters is an error.

  The clip takes the step's gradient norm (`grad_norm`, see clip_by_global_norm) unless
  groups are frozen: then it clips by the norm of the trained parameters' gradients only,
  which it computes itself (optax.clip_by_global_norm inside the multi_transform)."""
  schedule = learning_rate_schedule(optim, total_steps)
  value = optim.get("freeze", "")
  names = [g.strip() for g in str(value or "").split(",") if g.strip()]
  frozen = param_groups.group_members("config.optim.freeze", value, groups)
  parts = []
  if optim.grad_clip and optim.grad_clip > 0:
    clip = optax.clip_by_global_norm if frozen else clip_by_global_norm
    parts.append(clip(float(optim.grad_clip)))
  parts.append(
      optax.adamw(
          schedule, b1=float(optim.b1), b2=float(optim.b2), eps=float(optim.eps),
          weight_decay=float(optim.weight_decay), mask=_decay_mask))
  train = optax.chain(*parts)
  if not frozen:
    return train

  def members(params):
    paths = [param_groups.param_path(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    for name in names:
      if not any(param_groups.member(p, groups[name]) is not None for p in paths):
        raise errors.ConfigError(
            f"config.optim.freeze={value!r}: group {name!r} holds none of this model's "
            f"parameters ({', '.join(groups[name])}; with config.model.scan_layers the "
            "blocks are one stacked tree and per-block groups cannot name them)")
    # -1: the whole leaf frozen, N > 0: its first N rows, 0: none of it.
    return jax.tree_util.tree_map_with_path(
        lambda p, _: param_groups.member(param_groups.param_path(p), tuple(frozen)) or 0, params)

  def labels(params):
    return jax.tree.map(lambda m: "frozen" if m == -1 else "train", members(params))

  rows = lambda params: jax.tree.map(lambda m: max(m, 0), members(params))
  return optax.chain(
      optax.multi_transform({"train": train, "frozen": optax.set_to_zero()}, labels),
      zero_rows(rows))


def for_setup(setup: families.Setup, optim: ml_collections.ConfigDict, total_steps: int
              ) -> optax.GradientTransformation:
  """config.optim's optimizer for a built family, with its groups for config.optim.freeze."""
  return make_optimizer(optim, total_steps,
                        param_groups.resolve_groups(setup.family, setup.model_config))
