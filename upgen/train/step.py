"""Pure train and eval steps. The family supplies the loss; nothing here is family-specific."""
from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import optax

from upgen.runtime.state import ema_decay_at
from upgen.runtime.state import TrainState
from upgen.runtime.state import update_ema

# (params, batch, rng, *, train, step) -> (loss, metrics): a family's loss_fn with its model
# and settings bound (families.Setup.loss_fn).
LossFn = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]


def _split_microbatches(batch: Any, num_micro: int) -> Any:
  """[B, ...] -> [A, B/A, ...] taking every A-th example, so each device's shard of the
  batch contributes equally to every micro-batch (no resharding of the batch axis)."""

  def split(x):
    b = x.shape[0]
    if b % num_micro:
      raise ValueError(
          f"config.optim.grad_accum_steps={num_micro} does not divide the batch ({b})")
    return jnp.swapaxes(x.reshape((b // num_micro, num_micro) + x.shape[1:]), 0, 1)

  return jax.tree.map(split, batch)


def train_step(state: TrainState, batch: Any, rng: jax.Array, *, loss_fn: LossFn,
               grad_accum_steps: int = 1, schedule: Optional[optax.Schedule] = None,
               ema_decay: float = 0.0) -> tuple[TrainState, dict]:
  """One optimizer step. Randomness is fold_in(rng, step), so a resumed run repeats it.
  `grad_accum_steps` micro-batches make one step; `schedule` (the learning rate by step) is
  only logged. With `ema_decay` > 0 the state's ema_params follow the new parameters
  (state.ema_decay_at's warm-up).

  A step whose loss or gradient is not finite leaves parameters and optimizer state as they
  were (only the step counter advances) and reports finite=0; the host decides to stop or
  go on (config.train.on_nonfinite).

  The gradient norm is computed once: the metric, the guard and the optimizer's clipping
  (optimizer.clip_by_global_norm, through the `grad_norm` extra argument) share it. The
  parameter norm is not a step metric: it reads every parameter, so the trainer computes it
  (`param_norm`) at the steps it logs.
  """
  step_rng = jax.random.fold_in(rng, state.step)
  grad_fn = jax.value_and_grad(functools.partial(loss_fn, train=True, step=state.step),
                               has_aux=True)
  num_micro = int(grad_accum_steps)
  if num_micro <= 1:
    (loss, aux), grads = grad_fn(state.params, batch, step_rng)
  else:
    micro = _split_microbatches(batch, num_micro)

    def body(acc, xs):
      i, mb = xs
      out = grad_fn(state.params, mb, jax.random.fold_in(step_rng, i))
      return jax.tree.map(jnp.add, acc, out), None

    shapes = jax.eval_shape(grad_fn, state.params, jax.tree.map(lambda x: x[0], micro), step_rng)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    ((loss, aux), grads), _ = jax.lax.scan(body, zeros, (jnp.arange(num_micro), micro))
    loss, aux, grads = jax.tree.map(lambda x: x / num_micro, (loss, aux, grads))

  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

  def update():
    updated = state.apply_gradients(grads, grad_norm=grad_norm)
    ema = state.ema_params
    if ema is not None:
      ema = update_ema(ema, updated.params, ema_decay_at(ema_decay, state.step))
    return updated.params, updated.opt_state, ema

  # A branch, not a select over the state: a select keeps the old and the new state alive
  # and copies both (a quarter of the tiny CPU step); the branch updates in place.
  params, opt_state, ema = jax.lax.cond(
      finite, update, lambda: (state.params, state.opt_state, state.ema_params))
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                            ema_params=ema)
  metrics = dict(aux)
  metrics.update(loss=loss, grad_norm=grad_norm, finite=finite.astype(jnp.float32))
  if schedule is not None:
    metrics["learning_rate"] = schedule(state.step)
  return new_state, metrics


def param_norm(params: Any) -> jax.Array:
  """The global norm of the parameters: a metric of the logged steps, not of every step."""
  return optax.tree.norm(params)
