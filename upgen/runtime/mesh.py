"""Device mesh and logical-axis sharding from config.

The mesh has three axes (data, fsdp, tensor). Models name their parameter and activation
axes logically ("embed", "mlp", "batch", ...); `config.mesh.rules` maps those names to mesh
axes, so data parallel, FSDP and tensor parallel are config choices, not code changes.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Any, Sequence

from flax import linen as nn
import jax
from jax.experimental import mesh_utils
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import ml_collections
import numpy as np

from upgen import errors

MESH_AXES = ("data", "fsdp", "tensor")
log = logging.getLogger("upgen.train")


def mesh_shape(mesh_config: ml_collections.ConfigDict, num_devices: int) -> tuple[int, ...]:
  """Resolves the (data, fsdp, tensor) shape; one entry may be -1 (the rest of the devices)."""
  shape = [int(mesh_config[a]) for a in MESH_AXES]
  if shape.count(-1) > 1:
    raise errors.ConfigError(f"config.mesh: at most one of {MESH_AXES} may be -1, got {shape}")
  known = int(np.prod([s for s in shape if s != -1]))
  if -1 in shape:
    if num_devices % known:
      raise errors.ConfigError(
          f"config.mesh: {num_devices} devices do not divide by {known} ({shape})")
    shape[shape.index(-1)] = num_devices // known
  if int(np.prod(shape)) != num_devices:
    raise errors.ConfigError(
        f"config.mesh: data*fsdp*tensor = {int(np.prod(shape))} but there are "
        f"{num_devices} devices (set one axis to -1 to take the rest)")
  return tuple(shape)


def make_mesh(mesh_config: ml_collections.ConfigDict, devices: Sequence[Any] | None = None) -> Mesh:
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(mesh_config, len(devices))
  try:
    device_array = mesh_utils.create_device_mesh(shape, devices)
  except (ValueError, NotImplementedError, AssertionError) as e:
    # The topology-aware layout does not fit this shape (an odd slice of a TPU pod, say).
    # Plain device order works but may put a mesh axis across slow links: say so.
    log.warning("config.mesh %s: no topology-aware layout for %d %s devices (%s: %s); using "
                "plain device order, which may be slow on a TPU pod or a multi-GPU host",
                dict(zip(MESH_AXES, shape)), len(devices), devices[0].platform,
                type(e).__name__, e)
    device_array = np.asarray(devices).reshape(shape)
  return Mesh(device_array, MESH_AXES)


def rules(mesh_config: ml_collections.ConfigDict) -> tuple[tuple[str, Any], ...]:
  out = []
  for name, axes in mesh_config.rules:
    out.append((name, tuple(axes) if isinstance(axes, (list, tuple)) else axes))
  return tuple(out)


@contextlib.contextmanager
def activate(mesh: Mesh, mesh_config: ml_collections.ConfigDict):
  """Mesh + logical axis rules in scope, for tracing models with logical constraints."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules(mesh_config)):
    yield


@contextlib.contextmanager
def detached():
  """No mesh and no logical axis rules in scope, whatever the caller activated: flax's
  logical constraints become no-ops and arrays go where their own code puts them. For
  host-side helpers with a layout of their own (the image tokenizer decoding previews inside
  a training loop on another mesh, restoring a run's parameters for sampling)."""
  with jax.set_mesh(None), nn.logical_axis_rules(()):
    yield


def logical_shardings(abstract_tree: Any, mesh: Mesh, mesh_config: ml_collections.ConfigDict) -> Any:
  """NamedShardings for a tree whose leaves may be flax LogicallyPartitioned boxes."""
  table = rules(mesh_config)

  def sharding(x):
    if not isinstance(x, nn.Partitioned):
      return NamedSharding(mesh, P())  # Unannotated: replicated.
    if not jax.tree.leaves(x.value):  # optax's MaskedNode (a frozen parameter's optimizer
      return x.value  # state) in a box: an empty node, as it is once unboxed.
    return NamedSharding(mesh, nn.logical_to_mesh_axes(x.get_partition_spec(), table))

  return jax.tree.map(sharding, abstract_tree, is_leaf=lambda x: isinstance(x, nn.Partitioned))


def batch_sharding(mesh: Mesh, mesh_config: ml_collections.ConfigDict) -> NamedSharding:
  """Sharding of a batch's leading dimension (the "batch" logical axis)."""
  spec = nn.logical_to_mesh_axes(("batch",), rules(mesh_config))
  return NamedSharding(mesh, P(*spec))


def process_rows(sharding: jax.sharding.Sharding, batch_size: int) -> tuple[int, ...]:
  """The rows of a global batch of `batch_size` that this process's devices hold under
  `sharding` (sorted): the rows its input pipeline must load. Rows held by several
  processes (a batch not split across them) are loaded by each of them."""
  try:
    index_map = sharding.addressable_devices_indices_map((batch_size,))
  except ValueError as e:
    raise errors.ConfigError(f"config.data.batch_size={batch_size} does not split evenly over the "
                             f"mesh axes that shard the batch ({e})") from e
  rows = set()
  for (rows_slice,) in index_map.values():
    rows.update(range(*rows_slice.indices(batch_size)))
  return tuple(sorted(rows))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def global_batch(batch: dict, sharding: jax.sharding.Sharding, batch_size: int) -> dict:
  """This process's rows (process_rows) of a batch -> global arrays of batch_size rows."""
  return {k: jax.make_array_from_process_local_data(
      sharding, np.asarray(v), (batch_size,) + np.shape(v)[1:]) for k, v in batch.items()}
