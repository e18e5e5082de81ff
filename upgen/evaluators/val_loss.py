"""The validation loss: the family's own loss (no dropout, a fixed rng, as at the run's last
step) on config.train.eval_batches batches of config.data.val_split, for the trained
parameters (val_loss, val_<term>) and, where the run keeps one, their EMA (val_ema_...).

Built for every run (registry.build); config.train.eval_batches=0 turns it off, and a run
whose data has no validation split logs a warning and goes on without it.
"""
from __future__ import annotations

import functools
import logging
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections

from upgen.runtime import mesh as mesh_lib

log = logging.getLogger("upgen.train")


def eval_step(params: Any, batch: Any, rng: jax.Array, *, loss_fn: Callable[..., Any],
              step: int) -> dict:
  """Loss metrics without dropout, as at optimizer step `step`. A fixed rng makes
  masked-token losses comparable."""
  loss, aux = loss_fn(params, batch, rng, train=False, step=jnp.asarray(step, jnp.int32))
  return dict(aux, loss=loss)


def evaluator(settings: ml_collections.ConfigDict, context: Any
              ) -> Optional[Callable[[Any], dict[str, float]]]:
  del settings  # The run's own config.train.eval_batches and config.data say what to read.
  config, setup = context.config, context.setup
  if int(config.train.eval_batches) <= 0:
    return None
  batch_size = int(config.data.batch_size)
  replicated = mesh_lib.replicated(context.mesh)
  loss_fn = setup.loss_fn()

  @functools.lru_cache(maxsize=2)  # A fitted run changes its step count once.
  def program(total: int):
    return jax.jit(functools.partial(eval_step, loss_fn=loss_fn, step=total),
                   out_shardings=replicated)

  def mean(params: Any) -> dict[str, float]:
    try:
      batches = setup.family.reads.eval_iterator(config, setup.spec, config.data.val_split,
                                                 context.rows)
    except (FileNotFoundError, KeyError, ValueError) as e:
      log.warning("no validation data (%s); skipping eval", e)
      return {}
    fn = program(context.total_steps())
    totals, n = {}, 0
    rng = jax.random.key(config.seed + 1)
    for i, batch in enumerate(batches):
      if i >= config.train.eval_batches:
        break
      out = jax.device_get(fn(params, mesh_lib.global_batch(batch, context.batch_sharding,
                                                            batch_size),
                              jax.random.fold_in(rng, i)))
      for k, v in out.items():
        totals[k] = totals.get(k, 0.0) + float(v)
      n += 1
    return {k: v / n for k, v in totals.items()} if n else {}

  def run(state: Any) -> dict[str, float]:
    out = {f"val_{k}": v for k, v in mean(state.params).items()}
    if state.ema_params is not None:
      out.update({f"val_ema_{k}": v for k, v in mean(state.ema_params).items()})
    return out

  return run
