"""Many processes: `upgen train` as 2 CPU processes of 4 devices each trains exactly like 1
process of 8 devices on the same mesh, and so does a two-level mesh with the processes as
two slices (data parallel over the slow "replica" axis, FSDP and tensor inside each); their
checkpoints resume in a 1-process run on another mesh; plus when
upgen/runtime/distributed.py calls jax.distributed.initialize.

The two 2-process runs and their 1-process twin run side by side (5 processes on 2 cores);
the resumed runs train in this process meanwhile. About a minute on 2 busy cores (75 s
with a cold compilation cache).
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from configs import upgen as upgen_config
from tests import token_data
from upgen import cli
from upgen.runtime import distributed
from upgen.train import main as train_main
from upgen.runtime import mesh as mesh_lib
from upgen.train import trainer
from upgen.runtime import writers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MESH = {"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2}
# The same devices as two slices (one per process): the slow axis where MESH has "data".
SLICES_MESH = {"mesh.replica": 2, "mesh.data": 1, "mesh.fsdp": 2, "mesh.tensor": 2}
STEPS, CHECKPOINT_EVERY = 6, 3
TIMEOUT_S = 240  # Per run; a hung collective fails the test instead of blocking CI.


def _overrides(data_dir: str) -> dict:
  return {**token_data.tiny_overrides(data_dir), "model.num_layers": 1,
          "model.dropout_rate": 0.1, "data.text_dropout": 0.2, "train.steps": STEPS,
          "train.log_every": 1, "train.checkpoint_every": CHECKPOINT_EVERY}


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _start(workdir: str, data_dir: str, devices: int, name: str, *extra: str,
           mesh: dict = MESH) -> subprocess.Popen:
  """`upgen train` on `devices` fake CPU devices; output in <workdir>.<name>.log."""
  os.makedirs(workdir, exist_ok=True)
  flags = [f"--config.{k}={v}" for k, v in {**_overrides(data_dir), **mesh}.items()]
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=" ".join([
      os.environ.get("XLA_FLAGS", ""), f"--xla_force_host_platform_device_count={devices}",
      "--xla_backend_optimization_level=0"]))  # Compiles ~1.5x faster; seconds-long runs.
  with open(f"{workdir}.{name}.log", "w") as log:
    return subprocess.Popen(
        [sys.executable, "-m", "upgen.cli", "train", "--config", "configs/upgen.py:tiny",
         "--workdir", workdir, *flags, *extra],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _kill(procs) -> None:
  for p in procs:
    if p.poll() is None:
      os.killpg(p.pid, signal.SIGKILL)
      p.wait()


def _wait(procs, workdir: str) -> None:
  """Waits for all of procs to succeed; on a failure or the deadline kills them all and
  fails with the end of their logs."""
  deadline = time.time() + TIMEOUT_S
  while any(p.poll() is None for p in procs) and time.time() < deadline:
    if any(p.poll() for p in procs):  # One failed: the others would wait for it.
      break
    time.sleep(0.2)
  if all(p.poll() == 0 for p in procs):
    return
  _kill(procs)
  logs = sorted(f for f in os.listdir(os.path.dirname(workdir))
                if f.startswith(os.path.basename(workdir) + ".") and f.endswith(".log"))
  tails = "\n".join(f"--- {f}\n" + open(os.path.join(os.path.dirname(workdir), f)).read()[-3000:]
                    for f in logs)
  pytest.fail(f"`upgen train` into {workdir} exited {[p.poll() for p in procs]} or timed "
              f"out after {TIMEOUT_S} s:\n{tails}")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Starts the 2-process runs (one-level mesh, and two slices) and the 1-process,
  8-device run of the same config."""
  root = tmp_path_factory.mktemp("multihost")
  data_dir = token_data.write(str(root / "records"))
  dirs = {name: str(root / name) for name in ("two", "slices", "one")}

  def two_processes(name, mesh):
    address = f"--coordinator_address=localhost:{_free_port()}"
    return [_start(dirs[name], data_dir, 4, f"p{i}", address, "--num_processes=2",
                   f"--process_id={i}", mesh=mesh) for i in range(2)]

  procs = {"two": two_processes("two", MESH), "slices": two_processes("slices", SLICES_MESH),
           "one": [_start(dirs["one"], data_dir, 8, "p0")]}
  yield {"data_dir": data_dir, **dirs, "procs": procs}
  _kill([p for ps in procs.values() for p in ps])


def _losses(workdir: str) -> dict[int, float]:
  rows = [r for r in writers.read_metrics(workdir) if "loss" in r]
  assert len(rows) == len({r["step"] for r in rows}), "a step was logged twice"
  return {r["step"]: r["loss"] for r in rows}


@pytest.mark.multidevice
@pytest.mark.parametrize("run", ["two", "slices"])
def test_checkpoint_of_two_processes_resumes_on_another_mesh(runs, run, tmp_path):
  _wait(runs["procs"][run], runs[run])
  two = _losses(runs[run])
  # Only process 0 wrote metrics (each step once), TensorBoard events and the config.
  assert sorted(two) == list(range(1, STEPS + 1))
  assert len(os.listdir(os.path.join(runs[run], "tensorboard"))) == 1
  assert os.path.exists(os.path.join(runs[run], "config.json"))
  # Both processes wrote their shards of each checkpoint, together through orbax.
  assert sorted(os.listdir(os.path.join(runs[run], "checkpoints"))) == ["3", "6"]
  state_dir = os.path.join(runs[run], "checkpoints", "3", "state")
  assert {"ocdbt.process_0", "ocdbt.process_1"} <= set(os.listdir(state_dir))

  # Step 3's checkpoint, resumed by this one process on its own devices, all on "data" (a
  # (1, 1, 1, 1) or (1, n, 1, 1) mesh where (1, 2, 2, 2) or two slices (2, 1, 2, 2) wrote it).
  resumed = str(tmp_path / "resumed")
  shutil.copytree(runs[run], resumed)
  shutil.rmtree(os.path.join(resumed, "checkpoints", "6"))
  c = upgen_config.get_config("tiny")
  c.update_from_flattened_dict({**_overrides(runs["data_dir"]),
                                "mesh.data": -1, "mesh.fsdp": 1, "mesh.tensor": 1})
  summary = trainer.train(c, resumed)
  assert summary["step"] == STEPS
  after = _losses(resumed)
  assert sorted(after) == list(range(1, STEPS + 1))
  # The same batches (data iterator state) and parameters: the uninterrupted losses.
  np.testing.assert_allclose([after[s] for s in range(4, STEPS + 1)],
                             [two[s] for s in range(4, STEPS + 1)], rtol=1e-4)


@pytest.mark.multidevice
def test_two_processes_train_like_one_process_on_the_same_mesh(runs):
  _wait(runs["procs"]["two"], runs["two"])
  _wait(runs["procs"]["one"], runs["one"])
  two, one = _losses(runs["two"]), _losses(runs["one"])
  assert sorted(two) == sorted(one) == list(range(1, STEPS + 1))
  np.testing.assert_allclose([two[s] for s in one], [one[s] for s in one], rtol=1e-4)
  assert len(set(one.values())) == STEPS  # Distinct batches, not one batch repeated.
  val_two, val_one = (writers.read_metrics(w)[-1] for w in (runs["two"], runs["one"]))
  np.testing.assert_allclose(val_two["val_loss"], val_one["val_loss"], rtol=1e-4)


@pytest.mark.multidevice
def test_two_processes_as_two_slices_train_like_one_process_on_a_one_level_mesh(runs):
  """Data parallel over the slow axis between the processes, FSDP 2 x tensor 2 inside each:
  the losses of (data 2, fsdp 2, tensor 2) on one process of 8 devices."""
  _wait(runs["procs"]["slices"], runs["slices"])
  _wait(runs["procs"]["one"], runs["one"])
  with open(os.path.join(runs["slices"], "config.json")) as f:
    mesh = json.load(f)["mesh"]
  assert {k: mesh[k] for k in ("replica", "data", "fsdp", "tensor")} == {
      "replica": 2, "data": 1, "fsdp": 2, "tensor": 2}
  slices, one = _losses(runs["slices"]), _losses(runs["one"])
  assert sorted(slices) == sorted(one) == list(range(1, STEPS + 1))
  np.testing.assert_allclose([slices[s] for s in one], [one[s] for s in one], rtol=1e-4)
  val_slices, val_one = (writers.read_metrics(w)[-1] for w in (runs["slices"], runs["one"]))
  np.testing.assert_allclose(val_slices["val_loss"], val_one["val_loss"], rtol=1e-4)


@pytest.fixture
def calls(monkeypatch):
  """Records jax.distributed.initialize calls instead of making them; no cluster variables."""
  made = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: made.append(kw))
  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
  for k in list(os.environ):
    if k.startswith(("SLURM_", "OMPI_", "TPU_", "MEGASCALE_")):
      monkeypatch.delenv(k)
  return made


def test_one_process_does_not_initialize(calls):
  assert distributed.initialize() == "" and calls == []


@pytest.fixture
def no_cpu_collectives():
  """jax_cpu_collectives_implementation unset (older jax's default), restored afterwards."""
  before = jax.config.jax_cpu_collectives_implementation
  jax.config.update("jax_cpu_collectives_implementation", None)
  yield
  jax.config.update("jax_cpu_collectives_implementation", before)


def test_flags_initialize_with_jax_argument_names(calls, no_cpu_collectives):
  fv = train_main.parse(["--config=configs/upgen.py:tiny", "--workdir=/tmp/w",
                         "--coordinator_address=10.0.0.1:1234", "--num_processes=4",
                         "--process_id=3", "--local_device_ids=0,1"])
  assert distributed.initialize(**distributed.flag_values(fv)) == "flags"
  assert calls == [{"coordinator_address": "10.0.0.1:1234", "num_processes": 4,
                    "process_id": 3, "local_device_ids": [0, 1]}]
  assert jax.config.jax_cpu_collectives_implementation == "gloo"  # CPU needs it for 4.


@pytest.mark.parametrize("given, missing", [
    ({"coordinator_address": "h:1"}, "--num_processes and --process_id"),
    ({"num_processes": 2, "process_id": 0}, "--coordinator_address"),
])
def test_some_but_not_all_flags_is_an_error_naming_the_missing(calls, given, missing):
  with pytest.raises(ValueError, match=f"also needs {missing} "):
    distributed.initialize(**given)
  assert calls == []


def test_upgen_train_names_the_missing_flags(calls, capsys):
  argv = ["--config=configs/upgen.py:tiny", "--workdir=/tmp/w", "--num_processes=2"]
  assert cli.main(["train"] + argv) == 2 and calls == []
  assert capsys.readouterr().err.startswith(
      "upgen train: error: --num_processes=2 also needs --coordinator_address and --process_id")


def test_bad_flag_values_are_errors(calls):
  with pytest.raises(ValueError, match="--process_id=2 is not in"):
    distributed.initialize("h:1", 2, 2)
  with pytest.raises(ValueError, match="--coordinator_address=h is not HOST:PORT"):
    distributed.initialize("h", 2, 0)
  with pytest.raises(ValueError, match="--local_device_ids needs"):
    distributed.initialize(local_device_ids=["0"])
  assert calls == []


def test_slurm_job_of_several_tasks_lets_jax_read_the_environment(calls, monkeypatch):
  slurm = {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "node[001-002]", "SLURM_PROCID": "1",
           "SLURM_LOCALID": "0"}
  for k, v in {**slurm, "SLURM_NTASKS": "1"}.items():
    monkeypatch.setenv(k, v)
  assert distributed.initialize() == "" and calls == []  # One task: one process.
  monkeypatch.setenv("SLURM_NTASKS", "2")
  assert distributed.detect_cluster() == ("slurm", 2)
  assert distributed.initialize() == "slurm"
  assert calls == [{"local_device_ids": None}]


class _Sharding:
  """Stands in for a sharding whose addressable devices hold the given row slices."""

  def __init__(self, slices):
    self.slices = slices

  def addressable_devices_indices_map(self, shape):
    if any((s.stop or 0) > shape[0] for s in self.slices):
      raise ValueError("does not divide")
    return {f"device{i}": (s,) for i, s in enumerate(self.slices)}


def test_process_rows_are_the_rows_its_devices_hold():
  held = _Sharding([slice(6, 8), slice(0, 2), slice(0, 2)])  # Two devices replicate 0:2.
  assert mesh_lib.process_rows(held, 8) == (0, 1, 6, 7)
  assert mesh_lib.process_rows(_Sharding([slice(None)]), 8) == tuple(range(8))
  with pytest.raises(ValueError, match=r"config\.data\.batch_size=6 does not split"):
    mesh_lib.process_rows(held, 6)
