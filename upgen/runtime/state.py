"""Train state, born sharded: eval_shape -> logical partition specs -> jit(out_shardings)."""
from __future__ import annotations

from typing import Any

from flax import linen as nn
from flax import struct
import jax
import jax.numpy as jnp
import optax

from upgen import families
from upgen.runtime import mesh as mesh_lib


class TrainState(struct.PyTreeNode):
  step: jax.Array
  params: Any
  opt_state: Any
  tx: optax.GradientTransformation = struct.field(pytree_node=False)
  # The exponential moving average of params (config.optim.ema_decay > 0), or None.
  ema_params: Any = None

  @classmethod
  def create(cls, params, tx: optax.GradientTransformation, ema: bool = False) -> "TrainState":
    return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), tx=tx,
               ema_params=params if ema else None)

  def apply_gradients(self, grads, **extra_args: Any) -> "TrainState":
    """One update; `extra_args` go to the optimizer's transforms that take them (e.g.
    grad_norm, optimizer.clip_by_global_norm's)."""
    updates, opt_state = optax.with_extra_args_support(self.tx).update(
        grads, self.opt_state, self.params, **extra_args)
    params = optax.apply_updates(self.params, updates)
    return self.replace(step=self.step + 1, params=params, opt_state=opt_state)


def ema_decay_at(decay: float, step: jax.Array) -> jax.Array:
  """The EMA's decay at optimizer step `step`: min(decay, (1 + step) / (10 + step)), so the
  average follows the parameters closely early on (TensorFlow's ExponentialMovingAverage
  with num_updates) and reaches `decay` after ~10 / (1 - decay) steps."""
  step = jnp.asarray(step, jnp.float32)
  return jnp.minimum(jnp.float32(decay), (1.0 + step) / (10.0 + step))


def update_ema(ema_params: Any, params: Any, decay: jax.Array) -> Any:
  return jax.tree.map(lambda e, p: (e + (1.0 - decay) * (p - e)).astype(e.dtype),
                      ema_params, params)


def _init_fn(setup: families.Setup, tx, ema: bool = False):
  batch = setup.dummy_batch(1)

  def init(rng):
    variables = setup.family.init_variables(setup.model, rng, batch)
    return TrainState.create(variables["params"], tx, ema)

  return init


def abstract_state(setup: families.Setup, tx, mesh, mesh_config, ema: bool = False
                   ) -> tuple[Any, Any]:
  """(abstract unboxed state, its NamedShardings), without allocating anything."""
  # Init runs outside the mesh context: flax applies logical constraints to parameters
  # while initializers run (on DenseGeneral's flattened kernels); out_shardings place them.
  boxed = jax.eval_shape(_init_fn(setup, tx, ema), jax.random.key(0))
  shardings = mesh_lib.logical_shardings(boxed, mesh, mesh_config)
  abstract = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      nn.meta.unbox(boxed), shardings)
  return abstract, shardings


def create_state(setup: families.Setup, tx, mesh, mesh_config, rng: jax.Array,
                 ema: bool = False) -> TrainState:
  """Initializes parameters and optimizer state directly in their sharded layout (and the
  parameters' EMA, equal to them at first, when `ema`)."""
  _, shardings = abstract_state(setup, tx, mesh, mesh_config, ema)
  init = _init_fn(setup, tx, ema)
  return jax.jit(lambda r: nn.meta.unbox(init(r)), out_shardings=shardings)(rng)


def count_params(params) -> int:
  return int(sum(x.size for x in jax.tree.leaves(params)))
