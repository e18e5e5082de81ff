"""Many processes: `jax.distributed.initialize` from flags or from the cluster, before any
jax backend exists.

Where a process learns who its peers are, first match wins:
  flags    --coordinator_address=HOST:PORT --num_processes=N --process_id=I (all three or
           none; the arguments of jax.distributed.initialize), optionally
           --local_device_ids=0,1 (the devices this process drives).
  cluster  a multi-process job that jax recognises by itself: Cloud TPU VM slices (GCE
           metadata; GKE's TPU_WORKER_HOSTNAMES / TPU_PROCESS_ADDRESSES; multislice
           MEGASCALE_*), SLURM (`srun`, SLURM_NTASKS > 1) and Open MPI (`mpirun`). Detection
           is jax's own (the cluster list jax.distributed.initialize() consults), and
           initialize() is then called without arguments so that jax reads the rest.
  neither  one process: nothing is initialized.

Kubernetes and mpi4py detection are left out: jax's Kubernetes check fires in any pod, and
mpi4py is opt-in in jax too. Such jobs pass the flags.
"""
from __future__ import annotations

import argparse
import logging
from typing import Any, Optional, Sequence

from absl import flags
import jax

from upgen import errors

log = logging.getLogger("upgen.train")

REQUIRED = ("coordinator_address", "num_processes", "process_id")
# Names of jax ClusterEnv subclasses whose presence means "one job of several processes".
AUTO_CLUSTERS = ("ompi", "slurm", "gcetpu", "gketpu")


def define_flags(fv: flags.FlagValues) -> None:
  """The jax.distributed.initialize arguments as flags (`upgen train --help`)."""
  flags.DEFINE_string("coordinator_address", None,
                      "HOST:PORT of process 0's coordinator, the same for every process.",
                      flag_values=fv)
  flags.DEFINE_integer("num_processes", None, "Number of processes in the job.", lower_bound=1,
                       flag_values=fv)
  flags.DEFINE_integer("process_id", None, "This process's index in [0, num_processes).",
                       lower_bound=0, flag_values=fv)
  flags.DEFINE_list("local_device_ids", None,
                    "Comma-separated ids of the local devices this process uses (default: all).",
                    flag_values=fv)


def add_arguments(parser: argparse.ArgumentParser) -> None:
  """The flags of `define_flags` for an argparse command (`upgen tokenize`), same names."""
  group = parser.add_argument_group("many processes (as `upgen train`)")
  group.add_argument("--coordinator_address", default=None,
                     help="HOST:PORT of process 0's coordinator, the same for every process")
  group.add_argument("--num_processes", type=errors.whole(1), default=None,
                     help="number of processes in the job")
  group.add_argument("--process_id", type=errors.whole(0), default=None,
                     help="this process's index in [0, num_processes)")
  group.add_argument("--local_device_ids", type=lambda v: v.split(","), default=None,
                     help="comma-separated ids of the local devices this process uses")


def argument_values(args: argparse.Namespace) -> dict[str, Any]:
  """The four arguments of `add_arguments` as keyword arguments of `initialize`."""
  return {k: getattr(args, k) for k in REQUIRED + ("local_device_ids",)}


def barrier(name: str, timeout_s: float = 7 * 24 * 3600) -> None:
  """Returns once every process of the job has called barrier(name); at once for one
  process. Through the coordination service's barrier, which waits as long as `timeout_s`
  (a collective would time out while one host still works through its share) and fails
  when a process has died."""
  if jax.process_count() == 1:
    return
  try:
    from jax._src import distributed as jax_distributed  # The client; not exported by jax.
    client = jax_distributed.global_state.client
  except (ImportError, AttributeError):
    client = None
  if client is None:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)
    return
  client.wait_at_barrier(name, int(timeout_s * 1000))


def flag_values(fv: flags.FlagValues) -> dict[str, Any]:
  """The four flags of `define_flags` as keyword arguments (None where unset)."""
  return {k: fv[k].value for k in REQUIRED + ("local_device_ids",)}


def explicit_args(coordinator_address: Optional[str] = None,
                  num_processes: Optional[int] = None, process_id: Optional[int] = None
                  ) -> Optional[dict[str, Any]]:
  """The three required arguments when all are given, None when none are; ValueError naming
  the missing flags otherwise, or naming a flag whose value cannot work."""
  given = dict(zip(REQUIRED, (coordinator_address, num_processes, process_id)))
  missing = [k for k, v in given.items() if v is None]
  if len(missing) == len(REQUIRED):
    return None
  if missing:
    named = ", ".join(f"--{k}={given[k]}" for k in REQUIRED if k not in missing)
    raise errors.ConfigError(f"{named} also needs " + " and ".join(f"--{k}" for k in missing) +
                             " (give all of --coordinator_address, --num_processes, --process_id, "
                             "or none of them)")
  host, _, port = coordinator_address.rpartition(":")
  if not host or not port.isdigit():
    raise errors.ConfigError(f"--coordinator_address={coordinator_address} is not HOST:PORT")
  if num_processes < 1 or not 0 <= process_id < num_processes:
    raise errors.ConfigError(f"--process_id={process_id} is not in [0, --num_processes="
                             f"{num_processes})")
  return given


def _device_ids(local_device_ids: Optional[Sequence[Any]]) -> Optional[list[int]]:
  if local_device_ids is None:
    return None
  try:
    return [int(i) for i in local_device_ids]
  except ValueError as e:
    raise errors.ConfigError(f"--local_device_ids={','.join(map(str, local_device_ids))} is not a "
                             f"comma-separated list of integers") from e


def detect_cluster() -> Optional[tuple[str, int]]:
  """(jax's name for the cluster, number of processes) of a multi-process job that
  jax.distributed.initialize() would configure itself from, or None."""
  try:
    from jax._src import clusters  # What initialize() consults; not exported by jax.
    cluster_types = list(clusters.ClusterEnv._cluster_types)  # pylint: disable=protected-access
  except (ImportError, AttributeError):
    log.warning("this jax does not expose its cluster detection; multi-process runs need "
                "--coordinator_address, --num_processes and --process_id")
    return None
  for env in cluster_types:
    if getattr(env, "name", "") in AUTO_CLUSTERS and env.is_env_present():
      count = int(env.get_process_count())
      return (env.name, count) if count > 1 else None
  return None


def _use_cpu_collectives() -> None:
  """Cross-process collectives for the CPU backend (gloo over TCP), unless the user chose an
  implementation. Without one, a multi-process job on CPU cannot run a collective; beside an
  accelerator the setting only concerns computations placed on the CPU."""
  if jax.config.jax_cpu_collectives_implementation is None:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None,
               local_device_ids: Optional[Sequence[Any]] = None) -> str:
  """Starts jax's distributed runtime for a multi-process run (see the module docstring).

  Returns how: "flags", the cluster's name ("slurm", "gcetpu", ...), "" for one process
  (nothing called), or "already" when someone initialized it before. Must run before
  anything creates a jax backend (jax raises otherwise).
  """
  explicit = explicit_args(coordinator_address, num_processes, process_id)
  device_ids = _device_ids(local_device_ids)
  if jax.distributed.is_initialized():
    return "already"
  cluster = None if explicit else detect_cluster()
  if explicit is None and cluster is None:
    if device_ids is not None:
      raise errors.ConfigError(
          "--local_device_ids needs --coordinator_address, --num_processes and "
          "--process_id (no multi-process cluster was detected)")
    return ""
  count = explicit["num_processes"] if explicit else cluster[1]
  if count > 1:
    _use_cpu_collectives()
  how = "flags" if explicit else cluster[0]
  log.info("jax.distributed.initialize from %s (%d processes)", how, count)
  jax.distributed.initialize(**(explicit or {}), local_device_ids=device_ids)
  return how
