"""upgen/runtime/mesh.py's device layout for several slices, on fake devices (no real
multi-process job): each slice is one index of the slow "replica" axis, with FSDP and the
other axes inside it; sizes that do not match the slices are one-line config errors.
(`tests/test_multihost.py` trains over two processes as two slices.)"""
import dataclasses

import jax
import numpy as np
import pytest

from configs import common
from configs import upgen as upgen_config
from upgen.runtime import mesh as mesh_lib


@dataclasses.dataclass(frozen=True)
class Device:
  """What the layout reads of a jax device."""
  id: int
  process_index: int
  platform: str = "cpu"
  device_kind: str = "fake"  # Not a TPU: create_device_mesh keeps the order it is given.


@dataclasses.dataclass(frozen=True)
class TpuDevice(Device):
  """A chip of a multislice TPU job: its slice and its place on the slice's torus."""
  platform: str = "tpu"
  device_kind: str = "TPU v4"
  slice_index: int = 0
  coords: tuple = (0, 0, 0)
  core_on_chip: int = 0


def _mesh_config(**sizes):
  c = upgen_config.get_config("tiny").mesh
  c.update(sizes)
  return c


def _tpu_slices(num_slices, processes_per_slice=2):
  """Chips of `num_slices` 2x2x2 slices, listed slice 1 first to show that order is not
  trusted."""
  per_process = 8 // processes_per_slice
  out = [TpuDevice(id=s * 8 + i, process_index=(s * 8 + i) // per_process, slice_index=s,
                   coords=(i % 2, i // 2 % 2, i // 4))
         for s in range(num_slices) for i in range(8)]
  return out[8:] + out[:8]


@pytest.mark.parametrize("devices", [
    _tpu_slices(2),  # Two TPU slices of 8 chips, 2 hosts each.
    [Device(id=i, process_index=i // 4) for i in reversed(range(16))],  # 4 processes.
    [TpuDevice(id=i, process_index=i // 4, platform="cpu") for i in range(16)],
], ids=["tpu-slices", "processes", "cpu-processes-with-slice-index"])
def test_each_slice_is_one_replica_with_fsdp_inside(devices, caplog):
  with caplog.at_level("WARNING", logger="upgen.train"):
    array = mesh_lib.device_array(_mesh_config(replica=2, data=1, fsdp=4, tensor=2), devices)
  assert "plain device order" not in caplog.text  # TPU: each slice laid out on its torus.
  assert array.shape == (2, 1, 4, 2)
  assert sorted(d.id for d in array.flat) == list(range(16))
  slice_of = lambda d: d.slice_index if d.platform == "tpu" else d.process_index // 2
  for r in range(2):  # Every device of slice r, and only those, at replica index r.
    assert {slice_of(d) for d in array[r].flat} == {r}
    assert sorted(d.id for d in array[r].flat) == list(range(8 * r, 8 * r + 8))
  # Along fsdp (and tensor) the devices stay in one slice; along replica each step
  # crosses to the other slice.
  fsdp = np.moveaxis(array, mesh_lib.MESH_AXES.index("fsdp"), -1).reshape(-1, 4)
  assert all(len({slice_of(d) for d in row}) == 1 for row in fsdp)
  across = np.moveaxis(array, 0, -1).reshape(-1, 2)
  assert all([slice_of(d) for d in row] == [0, 1] for row in across)


def test_minus_one_takes_the_rest_of_a_slice_and_processes_group_in_order():
  devices = [Device(id=i, process_index=i // 2) for i in range(8)]  # 4 processes of 2.
  array = mesh_lib.device_array(_mesh_config(replica=2, data=1, fsdp=-1, tensor=1), devices)
  assert array.shape == (2, 1, 4, 1)
  # Slice 0 is processes 0 and 1, slice 1 processes 2 and 3: consecutive processes.
  assert [[d.process_index for d in array[r].flat] for r in range(2)] == [[0, 0, 1, 1],
                                                                          [2, 2, 3, 3]]


def test_one_slice_is_todays_mesh():
  c = upgen_config.get_config("tiny").mesh
  assert c.replica == 1 and mesh_lib.mesh_shape(c, 8) == (1, 8, 1, 1)
  mesh = mesh_lib.make_mesh(c)
  assert mesh.axis_names == ("replica", "data", "fsdp", "tensor")
  assert list(mesh.devices.flat) == jax.devices()
  # A mesh config written before the key existed (a run's config.json) is one slice.
  old = {k: v for k, v in c.to_dict().items() if k != "replica"}
  assert mesh_lib.mesh_shape(type(c)(old), 8) == (1, 8, 1, 1)
  # The batch goes over the slow axis first, then today's axes.
  assert dict(common.DEFAULT_RULES)["batch"] == ("replica", "data", "fsdp")


@pytest.mark.parametrize("devices, sizes, message", [
    (_tpu_slices(2), {"replica": 4, "data": 1},
     r"config\.mesh\.replica=4 but the devices are in 2 TPU slice\(s\): set "
     r"config\.mesh\.replica=2"),
    ([Device(id=i, process_index=i // 4) for i in range(12)], {"replica": 2},
     r"config\.mesh\.replica=2 does not divide the 3 process\(es\)"),
    ([Device(id=i, process_index=0) for i in range(8)], {"replica": 2},
     r"config\.mesh\.replica=2 does not divide the 1 process\(es\)"),
    ([Device(id=i, process_index=i // 4) for i in range(8)], {"replica": 0},
     r"config\.mesh\.replica=0: must be >= 1 and divide the 8 devices"),
    ([Device(id=i, process_index=i // 4) for i in range(8)],
     {"replica": 2, "data": 1, "fsdp": 2, "tensor": 1},
     r"config\.mesh: data\*fsdp\*tensor = 2 but there are 4 devices in each of the "
     r"config\.mesh\.replica=2 slices"),
    ([Device(id=i, process_index=i // 4) for i in range(8)],
     {"replica": 2, "rules": (("batch", ("data", "fsdp")),)},
     r"config\.mesh\.replica=2 but config\.mesh\.rules shards \"batch\" over \('data', "
     r"'fsdp'\), not over \"replica\""),
])
def test_sizes_that_do_not_match_the_slices_are_config_errors(devices, sizes, message):
  with pytest.raises(mesh_lib.errors.ConfigError, match=message):
    mesh_lib.device_array(_mesh_config(**sizes), devices)
