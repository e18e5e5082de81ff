"""Train state, born sharded: eval_shape -> logical partition specs -> jit(out_shardings)."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn
from flax import struct

from upgen import families
from upgen.train import mesh as mesh_lib


class TrainState(struct.PyTreeNode):
  step: jax.Array
  params: Any
  opt_state: Any
  tx: optax.GradientTransformation = struct.field(pytree_node=False)

  @classmethod
  def create(cls, params, tx: optax.GradientTransformation) -> "TrainState":
    return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), tx=tx)

  def apply_gradients(self, grads) -> "TrainState":
    updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
    params = optax.apply_updates(self.params, updates)
    return self.replace(step=self.step + 1, params=params, opt_state=opt_state)


def _init_fn(setup: families.Setup, tx):
  batch = setup.dummy_batch(1)

  def init(rng):
    variables = setup.family.init_variables(setup.model, rng, batch)
    return TrainState.create(variables["params"], tx)

  return init


def abstract_state(setup: families.Setup, tx, mesh, mesh_config) -> tuple[Any, Any]:
  """(abstract unboxed state, its NamedShardings), without allocating anything."""
  # Init runs outside the mesh context: flax applies logical constraints to parameters
  # while initializers run (on DenseGeneral's flattened kernels); out_shardings place them.
  boxed = jax.eval_shape(_init_fn(setup, tx), jax.random.key(0))
  shardings = mesh_lib.logical_shardings(boxed, mesh, mesh_config)
  abstract = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      nn.meta.unbox(boxed), shardings)
  return abstract, shardings


def create_state(setup: families.Setup, tx, mesh, mesh_config, rng: jax.Array) -> TrainState:
  """Initializes parameters and optimizer state directly in their sharded layout."""
  _, shardings = abstract_state(setup, tx, mesh, mesh_config)
  init = _init_fn(setup, tx)
  return jax.jit(lambda r: nn.meta.unbox(init(r)), out_shardings=shardings)(rng)


def count_params(params) -> int:
  return int(sum(x.size for x in jax.tree.leaves(params)))
