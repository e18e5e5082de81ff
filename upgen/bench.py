"""`upgen bench ...`: throughput measurements (never timed tests).

  upgen bench data --data-dir W/data [--split train] [--batch-size 64] [--seconds 10]
      records/s per process through the grain pipeline, beside the records/s the train step
      of --config would consume (if given).
"""
from __future__ import annotations

import argparse
import functools
import sys
import time
from typing import Optional

import jax
import ml_collections
import numpy as np

from upgen import families


def _train_setup(config: ml_collections.ConfigDict):
  from upgen.train import mesh as mesh_lib
  from upgen.train import optimizer as optimizer_lib
  from upgen.train import state as state_lib
  from upgen.train import step as step_lib
  from upgen.train import trainer

  family = families.get_family(config.model.family)
  config = trainer.resolve_config(config, family)
  mesh = mesh_lib.make_mesh(config.mesh)
  model = family.make_model(config)
  tx = optimizer_lib.make_optimizer(config.optim, config.train.steps)
  state = state_lib.create_state(family, model, tx, config, mesh, jax.random.key(config.seed))
  batch_sharding = mesh_lib.batch_sharding(mesh, config.mesh)
  batch = {k: jax.device_put(v, batch_sharding)
           for k, v in family.dummy_batch(config, config.data.batch_size).items()}
  step = jax.jit(functools.partial(step_lib.train_step, family=family, model=model,
                                   config=config), donate_argnums=0)
  return config, mesh, state, batch, step


def time_train_steps(config: ml_collections.ConfigDict, num_steps: int = 5) -> float:
  """Seconds per train step on synthetic batches of the real shapes, compilation excluded."""
  config, mesh, state, batch, step = _train_setup(config)
  from upgen.train import mesh as mesh_lib
  rng = jax.random.key(0)
  with mesh_lib.activate(mesh, config.mesh):
    state, metrics = step(state, batch, rng)  # Compile.
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(num_steps):
      state, metrics = step(state, batch, rng)
    jax.block_until_ready(metrics)
  return (time.perf_counter() - start) / num_steps


def bench_data(data_dir: str, split: str, batch_size: int, seconds: float) -> dict:
  from upgen.data import pipeline
  rate = pipeline.records_per_second(data_dir, split, batch_size, seconds)
  return {"records_per_sec_per_process": rate, "processes": jax.process_count()}


def main(argv: Optional[list[str]] = None) -> int:
  argv = list(argv or [])
  if not argv or argv[0] != "data":
    print("usage: upgen bench data --data-dir DIR [--split S] [--batch-size B] [--seconds T]",
          file=sys.stderr)
    return 2
  parser = argparse.ArgumentParser(prog="upgen bench data")
  parser.add_argument("--data-dir", required=True)
  parser.add_argument("--split", default="train")
  parser.add_argument("--batch-size", type=int, default=64)
  parser.add_argument("--seconds", type=float, default=10.0)
  parser.add_argument("--config", help="Also time this config's train step (configs/x.py:arg).")
  args = parser.parse_args(argv[1:])
  result = bench_data(args.data_dir, args.split, args.batch_size, args.seconds)
  print(f"data: {result['records_per_sec_per_process']:.0f} records/s per process "
        f"(batch {args.batch_size}, split {args.split})")
  if args.config:
    from upgen.train.main import config_path
    path, _, arg = config_path(args.config).partition(":")
    import importlib.util
    spec = importlib.util.spec_from_file_location("bench_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(arg) if arg else module.get_config()
    config.data.dir = args.data_dir
    sec = time_train_steps(config)
    consumed = config.data.batch_size / sec / jax.process_count()
    print(f"train step: {sec * 1e3:.1f} ms/step -> consumes {consumed:.0f} records/s per process")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
