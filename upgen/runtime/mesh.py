"""Device mesh and logical-axis sharding from config.

The mesh has four axes, outermost first: "replica", the slow one, across slices (TPU slices
joined by the data-center network, DCN; or groups of processes, e.g. GPU hosts over
Ethernet), then "data", "fsdp" and "tensor" inside each slice (ICI, NVLink). Models name
their parameter and activation axes logically ("embed", "mlp", "batch", ...);
`config.mesh.rules` maps those names to mesh axes, so data parallel, FSDP and tensor
parallel are config choices, not code changes.

"replica" is data parallelism across slices: the batch is split over it (the default
"batch" rule names it first) and every slice holds the whole model state, so the only
traffic on the slow network is the gradient all-reduce. It is a mesh axis of its own, not
a part of "data", so that a reduction over the slow network alone can name it (a
compressed gradient all-reduce such as PowerSGD, in a shard_map over "replica"). With one
slice (config.mesh.replica=1, the default) it has size 1 and the mesh is today's.
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

SLOW_AXIS = "replica"  # Across slices (DCN): one index per slice.
SLICE_AXES = ("data", "fsdp", "tensor")  # Inside a slice (ICI), outermost first.
MESH_AXES = (SLOW_AXIS,) + SLICE_AXES
log = logging.getLogger("upgen.train")


def mesh_shape(mesh_config: ml_collections.ConfigDict, num_devices: int) -> tuple[int, ...]:
  """Resolves the (replica, data, fsdp, tensor) shape: data*fsdp*tensor is the devices of
  one slice (num_devices / replica); one of the three may be -1 (the rest of them)."""
  replica = int(mesh_config.get(SLOW_AXIS, 1))  # Configs written before it lack the key.
  if replica < 1 or num_devices % replica:
    raise errors.ConfigError(
        f"config.mesh.{SLOW_AXIS}={replica}: must be >= 1 and divide the {num_devices} devices")
  per_slice = num_devices // replica
  shape = [int(mesh_config[a]) for a in SLICE_AXES]
  if shape.count(-1) > 1:
    raise errors.ConfigError(f"config.mesh: at most one of {SLICE_AXES} may be -1, got {shape}")
  known = int(np.prod([s for s in shape if s != -1]))
  where = (f"{per_slice} devices" if replica == 1 else
           f"{per_slice} devices in each of the config.mesh.{SLOW_AXIS}={replica} slices")
  if -1 in shape:
    if per_slice % known:
      raise errors.ConfigError(f"config.mesh: {where} do not divide by {known} ({shape})")
    shape[shape.index(-1)] = per_slice // known
  if int(np.prod(shape)) != per_slice:
    raise errors.ConfigError(
        f"config.mesh: data*fsdp*tensor = {int(np.prod(shape))} but there are {where} "
        f"(set one axis to -1 to take the rest)")
  return (replica, *shape)


def tpu_slices(devices: Sequence[Any]) -> bool:
  """Whether `devices` are TPUs that say which slice they are in. (CPU devices of a
  multi-process job carry a `slice_index` too, 0 for all: not slices.)"""
  return devices[0].platform == "tpu" and hasattr(devices[0], "slice_index")


def slices(devices: Sequence[Any], num_slices: int) -> list[list[Any]]:
  """`devices` in `num_slices` groups joined by the slow network, each sorted by (process,
  id): by the `slice_index` of TPU devices (then num_slices must be the number of slices),
  else by process, `num_processes / num_slices` consecutive processes to a slice (a GPU
  host, or in tests a CPU process, stands in for a slice)."""
  on_tpu = tpu_slices(devices)
  key = lambda d: (d.slice_index if on_tpu else 0, d.process_index, d.id)
  devices = sorted(devices, key=key)
  if on_tpu:
    found = sorted({d.slice_index for d in devices})
    if len(found) != num_slices:
      raise errors.ConfigError(
          f"config.mesh.{SLOW_AXIS}={num_slices} but the devices are in {len(found)} TPU "
          f"slice(s): set config.mesh.{SLOW_AXIS}={len(found)}")
    groups = [[d for d in devices if d.slice_index == s] for s in found]
  else:
    processes = sorted({d.process_index for d in devices})
    if len(processes) % num_slices:
      raise errors.ConfigError(
          f"config.mesh.{SLOW_AXIS}={num_slices} does not divide the {len(processes)} "
          f"process(es) of this job (without TPU slices, a slice is a group of processes; "
          f"config.mesh.{SLOW_AXIS} is at most the number of processes)")
    per = len(processes) // num_slices
    slice_of = {p: i // per for i, p in enumerate(processes)}
    groups = [[d for d in devices if slice_of[d.process_index] == s] for s in range(num_slices)]
  sizes = sorted({len(g) for g in groups})
  if len(sizes) > 1:
    raise errors.ConfigError(f"config.mesh.{SLOW_AXIS}={num_slices}: the slices have different "
                             f"numbers of devices ({[len(g) for g in groups]})")
  return groups


def check(mesh_config: ml_collections.ConfigDict, devices: Sequence[Any] | None = None
          ) -> tuple[int, ...]:
  """The mesh shape, having checked everything `make_mesh` and `batch_sharding` would
  refuse (sizes, slices, a batch rule that leaves out the slow axis); ConfigError naming the
  keys otherwise. Builds nothing, so the trainer calls it before writing anything."""
  devices = list(jax.devices() if devices is None else devices)
  replica = int(mesh_config.get(SLOW_AXIS, 1))
  if replica > 1:  # The slices first: the sizes inside one depend on them.
    slices(devices, replica)
  shape = mesh_shape(mesh_config, len(devices))
  if shape[0] > 1:
    batch_axes = nn.logical_to_mesh_axes(("batch",), rules(mesh_config))[0]
    if SLOW_AXIS not in (batch_axes if isinstance(batch_axes, tuple) else (batch_axes,)):
      raise errors.ConfigError(
          f"config.mesh.{SLOW_AXIS}={shape[0]} but config.mesh.rules shards \"batch\" over "
          f"{batch_axes!r}, not over \"{SLOW_AXIS}\": every slice would compute the whole batch "
          f"(name \"{SLOW_AXIS}\" first, as the default rule (\"batch\", "
          f"(\"{SLOW_AXIS}\", \"data\", \"fsdp\")) does)")
  return shape


def _plain(devices: Sequence[Any], shape: Sequence[int], why: Exception) -> np.ndarray:
  """The devices in plain order (sorted by process, id within each slice), with a warning:
  a mesh axis may then run across slow links."""
  log.warning("config.mesh %s: no topology-aware layout for %d %s devices (%s: %s); using "
              "plain device order, which may be slow on a TPU pod or a multi-GPU host",
              dict(zip(MESH_AXES, shape)), len(devices), devices[0].platform,
              type(why).__name__, why)
  return np.asarray(devices).reshape(shape)


def device_array(mesh_config: ml_collections.ConfigDict, devices: Sequence[Any] | None = None
                 ) -> np.ndarray:
  """Devices shaped (replica, data, fsdp, tensor), each slice's devices at one index of
  "replica" (the slow axis outermost) and laid out inside the slice for its fast links."""
  devices = list(jax.devices() if devices is None else devices)
  shape = check(mesh_config, devices)
  layout_errors = (ValueError, NotImplementedError, AssertionError)
  if shape[0] == 1:
    if tpu_slices(devices) and len({d.slice_index for d in devices}) > 1:
      log.warning("the devices are in several TPU slices but config.mesh.%s=1: the mesh's "
                  "axes may run across the slow network between them; set config.mesh.%s "
                  "to the number of slices", SLOW_AXIS, SLOW_AXIS)
    try:
      return mesh_utils.create_device_mesh(shape, devices)
    except layout_errors as e:
      # The topology-aware layout does not fit this shape (an odd slice of a TPU pod, say).
      return _plain(devices, shape, e)
  groups = slices(devices, shape[0])
  if tpu_slices(devices):
    try:
      return mesh_utils.create_hybrid_device_mesh((1, *shape[1:]), (shape[0], 1, 1, 1),
                                                  devices)
    except layout_errors as e:
      return _plain([d for g in groups for d in g], shape, e)
  # Slices are groups of processes: each group's devices in order, one index of "replica".
  return np.asarray([d for g in groups for d in g]).reshape(shape)


def make_mesh(mesh_config: ml_collections.ConfigDict, devices: Sequence[Any] | None = None) -> Mesh:
  return Mesh(device_array(mesh_config, devices), MESH_AXES)


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
