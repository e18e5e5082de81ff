"""`upgen bench ...`: throughput measurements (never timed tests). Results go in
docs/performance.md with their command, device and date.

  upgen bench train --config configs/upgen.py:large [--config.KEY=VALUE ...] [--steps 20]
      Train steps on synthetic token batches of the real shapes (no input pipeline),
      compilation excluded: step time, tokens/s, peak device memory, and MFU with the FLOP
      count written out (upgen/flops.py).
  upgen bench sample --config configs/upgen.py:large [--batch-sizes 1,8,32,128]
      Text->image sampling with config.sample (random weights: speed does not depend on
      them): images/s and image tokens/s per batch size, next to the FLOP bound and the
      memory-bandwidth bound of the device.
  upgen bench data --data-dir W/data [--split train] [--batch-size 64] [--config C]
      records/s per process through the grain pipeline, beside the records/s the train step
      of --config consumes.

The sizes that come from data are read from config.data.dir's records when it is set,
else taken from --image_grid/--image_vocab/--text_vocab (a synthetic DataSpec).
"""
from __future__ import annotations

import dataclasses
import datetime
import functools
import importlib.util
import json
import statistics
import sys
import time
from typing import Any, Optional

from absl import flags
import jax
import ml_collections
import numpy as np

from upgen import errors
from upgen import families
from upgen import flops as flops_lib
from upgen.data import pipeline
from upgen.runtime import checkpoint
from upgen.runtime import mesh as mesh_lib
from upgen.runtime import optimizer
from upgen.runtime import state as state_lib
from upgen.train import step as step_lib
from upgen.train.main import config_flags_for
from upgen.train.main import config_path
from upgen.train.main import override_error

USAGE = """usage:
  upgen bench train  --config FILE:ARG [--config.KEY=V ...] [--steps N] [--json OUT]
  upgen bench sample --config FILE:ARG [--config.KEY=V ...] [--batch-sizes 1,8,32] [--json OUT]
  upgen bench data   --data-dir DIR [--split S] [--batch-size B] [--seconds T] [--config FILE:ARG]"""


def setup_for(config: ml_collections.ConfigDict, image_grid: int = 16, image_vocab: int = 8192,
              text_vocab: int = 32768, image_size: int = 0) -> families.Setup:
  """The family built against config.data.dir's data, or against a synthetic spec of these
  sizes when config.data.dir is empty (`image_size`: the pixels of pixel families; 0 =
  the reader's default)."""
  family = families.get_family(config.model.family)
  if config.data.get("dir"):
    spec = family.reads.spec(config.data)
  else:
    data = config.data
    if image_size:
      data = ml_collections.ConfigDict({**config.data.to_dict(), "image_size": image_size})
    spec = family.reads.synthetic_spec(data, image_grid=image_grid,
                                       image_vocab=image_vocab, text_vocab=text_vocab)
  return families.build(config, spec, family)


def _optimizer_and_mesh(config: ml_collections.ConfigDict, setup: families.Setup):
  return (mesh_lib.make_mesh(config.mesh),
          optimizer.for_setup(setup, config.optim, config.train.steps))


def _state(config: ml_collections.ConfigDict, setup: families.Setup, mesh, tx):
  return state_lib.create_state(setup, tx, mesh, config.mesh, jax.random.key(config.seed),
                                checkpoint.uses_ema(config))


def _peak_memory() -> Optional[int]:
  stats = [d.memory_stats() or {} for d in jax.local_devices()]
  peaks = [s.get("peak_bytes_in_use") for s in stats]
  return max(peaks) if peaks and all(p is not None for p in peaks) else None


def _program_memory(compiled) -> Optional[float]:
  """GiB a compiled program needs per device: arguments + outputs + temporaries - aliased
  (donated) buffers, from XLA's memory analysis."""
  try:
    m = compiled.memory_analysis()
    total = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
             - m.alias_size_in_bytes)
  except Exception:  # pylint: disable=broad-except
    return None  # Not every backend reports it.
  return total / 2 ** 30


def _device_peaks(peak_tflops: Optional[float], bandwidth_tbs: Optional[float]):
  known = flops_lib.device_peaks(jax.devices()[0].device_kind) or (None, None)
  return (peak_tflops * 1e12 if peak_tflops else known[0],
          bandwidth_tbs * 1e12 if bandwidth_tbs else known[1])


def _device_line() -> str:
  return f"{jax.device_count()} x {jax.devices()[0].device_kind} ({jax.default_backend()})"


@dataclasses.dataclass
class TrainProgram:
  """A train step lowered for `config` (`lower_train`), compiled by `compile()` (which may
  run on another thread: scripts/gpu_measure.py compiles several at once) and timed by
  `time_train`."""
  config: ml_collections.ConfigDict
  setup: families.Setup
  mesh: Any
  tx: Any
  batch: dict
  lowered: Any
  lower_s: float
  compiled: Any = None
  compile_s: float = 0.0

  def compile(self) -> "TrainProgram":
    start = time.perf_counter()
    self.compiled = self.lowered.compile()
    self.compile_s = time.perf_counter() - start
    return self


def lower_train(config: ml_collections.ConfigDict, setup: families.Setup) -> TrainProgram:
  """The jitted train step (state donated) lowered on abstract state and a synthetic batch
  of the real shapes."""
  start = time.perf_counter()
  mesh, tx = _optimizer_and_mesh(config, setup)
  abstract, _ = state_lib.abstract_state(setup, tx, mesh, config.mesh,
                                         checkpoint.uses_ema(config))
  sharding = mesh_lib.batch_sharding(mesh, config.mesh)
  batch = {k: jax.device_put(v, sharding)
           for k, v in setup.dummy_batch(config.data.batch_size).items()}
  step = jax.jit(functools.partial(step_lib.train_step, loss_fn=setup.loss_fn(),
                                   grad_accum_steps=config.optim.grad_accum_steps,
                                   ema_decay=float(config.optim.get("ema_decay", 0.0) or 0.0)),
                 donate_argnums=0)
  with mesh_lib.activate(mesh, config.mesh):
    lowered = step.lower(abstract, batch, jax.random.key(0))
  return TrainProgram(config, setup, mesh, tx, batch, lowered, time.perf_counter() - start)


def time_train(program: TrainProgram, steps: int, peak_flops: Optional[float]
               ) -> dict[str, Any]:
  """Runs a compiled program: two warm-up steps (allocator, first-run costs), then `steps`
  timed steps."""
  if program.compiled is None:
    program.compile()
  config, setup, step = program.config, program.setup, program.compiled
  state = _state(config, setup, program.mesh, program.tx)
  rng = jax.random.key(0)
  with mesh_lib.activate(program.mesh, config.mesh):
    for _ in range(2):
      state, metrics = step(state, program.batch, rng)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(steps):
      state, metrics = step(state, program.batch, rng)
    jax.block_until_ready(metrics)
    step_s = (time.perf_counter() - start) / steps
  loss = float(metrics["loss"])
  if not np.isfinite(loss):
    raise RuntimeError(f"bench train: non-finite loss {loss} on synthetic batches")
  family = setup.family
  tokens_per_example = family.reads.tokens_per_example(setup.spec)
  count = family.train_flops(setup.model_config) if family.train_flops else None
  batch_size = config.data.batch_size
  out = {
      "bench": "train", "config": family.name, "size": config.model.get("size", ""),
      "device": _device_line(), "batch_size": batch_size,
      "tokens_per_example": tokens_per_example, "step_ms": step_s * 1e3,
      "compile_s": program.lower_s + program.compile_s, "examples_per_s": batch_size / step_s,
      "tokens_per_s": batch_size * tokens_per_example / step_s,
      "peak_memory_gib": (_peak_memory() or 0) / 2 ** 30 or None,
      "program_memory_gib": _program_memory(step),
      "num_params": int(sum(x.size for x in jax.tree.leaves(state.params))),
      "dtype": config.model.dtype, "param_dtype": config.model.param_dtype, "loss": loss,
  }
  if count is not None:
    out["flops_per_example"] = count.total
    out["flops_terms"] = count.describe()
    out["tflops_per_s"] = count.total * batch_size / step_s / 1e12
    if peak_flops:
      out["peak_tflops_per_device"] = peak_flops / 1e12
      out["mfu"] = flops_lib.mfu(count.total * batch_size, step_s, jax.device_count(),
                                 peak_flops)
  return out


def bench_train(config: ml_collections.ConfigDict, setup: families.Setup, steps: int,
                peak_flops: Optional[float]) -> dict[str, Any]:
  """Times `steps` train steps after compiling and two warm-up steps."""
  return time_train(lower_train(config, setup).compile(), steps, peak_flops)


def time_train_steps(config: ml_collections.ConfigDict, num_steps: int = 5) -> float:
  """Seconds per train step on synthetic batches of the real shapes, compilation excluded."""
  return bench_train(config, setup_for(config), num_steps, None)["step_ms"] / 1e3


@dataclasses.dataclass
class SampleProgram:
  """The family's sample_images lowered per batch size (`lower_sample`); compiled like
  TrainProgram; timed by `time_sample`."""
  config: ml_collections.ConfigDict
  setup: families.Setup
  lowered: dict  # batch size -> (Lowered, caption arrays)
  compiled: Optional[dict] = None
  compile_s: float = 0.0

  def compile(self) -> "SampleProgram":
    start = time.perf_counter()
    self.compiled = {b: (low.compile(), captions) for b, (low, captions) in self.lowered.items()}
    self.compile_s = time.perf_counter() - start
    return self


def lower_sample(config: ml_collections.ConfigDict, setup: families.Setup,
                 batch_sizes: list[int]) -> SampleProgram:
  mesh, tx = _optimizer_and_mesh(config, setup)
  params = state_lib.abstract_state(setup, tx, mesh, config.mesh,
                                    checkpoint.uses_ema(config))[0].params
  sample = jax.jit(setup.bind("sample_images"))
  lowered = {}
  for b in batch_sizes:
    captions = setup.family.reads.captions(setup.dummy_batch(b))
    lowered[b] = (sample.lower(params, *captions, jax.random.key(0)), captions)
  return SampleProgram(config, setup, lowered)


def time_sample(program: SampleProgram, repeats: int, peak_flops: Optional[float],
                bandwidth: Optional[float]) -> list[dict[str, Any]]:
  """Per batch size: one untimed call, then the median of `repeats` timed calls."""
  if program.compiled is None:
    program.compile()
  config, setup = program.config, program.setup
  mesh, tx = _optimizer_and_mesh(config, setup)
  params = _state(config, setup, mesh, tx).params
  param_bytes = int(sum(x.nbytes for x in jax.tree.leaves(params)))
  family = setup.family
  rows = []
  for b, (sample, captions) in program.compiled.items():
    out = jax.block_until_ready(sample(params, *captions, jax.random.key(0)))
    times = []
    for i in range(repeats):
      start = time.perf_counter()
      jax.block_until_ready(sample(params, *captions, jax.random.key(i + 1)))
      times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    per_image = int(np.prod(out.shape[1:])) if out.dtype != np.uint8 else 0
    row = {"bench": "sample", "config": family.name,
           "size": config.model.get("size", ""), "device": _device_line(), "batch_size": b,
           "seconds": seconds, "compile_s": program.compile_s, "images_per_s": b / seconds,
           "image_tokens_per_s": b * per_image / seconds,
           "param_dtype": config.model.get("param_dtype", ""),
           "sample": dataclasses.asdict(setup.sample)}
    if family.sample_cost is not None:
      cost = family.sample_cost(setup.model_config, setup.sample, b, param_bytes)
      row["cost"] = cost.note
      row["tflops_per_s"] = cost.flops / seconds / 1e12
      if peak_flops:
        row["flop_bound_images_per_s"] = b * jax.device_count() * peak_flops / cost.flops
      if bandwidth:
        row["bandwidth_bound_images_per_s"] = b * jax.device_count() * bandwidth / cost.bytes
    rows.append(row)
  return rows


def bench_sample(config: ml_collections.ConfigDict, setup: families.Setup,
                 batch_sizes: list[int], repeats: int, peak_flops: Optional[float],
                 bandwidth: Optional[float]) -> list[dict[str, Any]]:
  """Times the family's sample_images per batch size (compile excluded, median of `repeats`)."""
  return time_sample(lower_sample(config, setup, batch_sizes).compile(), repeats, peak_flops,
                     bandwidth)


def bench_data(data_dir: str, split: str, batch_size: int, seconds: float) -> dict:
  rate = pipeline.records_per_second(data_dir, split, batch_size, seconds)
  return {"records_per_sec_per_process": rate, "processes": jax.process_count()}


def _load_config(argv: list[str], extra) -> tuple[ml_collections.ConfigDict, Any]:
  """--config FILE:ARG with --config.KEY=V overrides (locked), plus the bench's own flags."""
  fv, argv = config_flags_for(argv, "upgen bench")
  extra(fv)
  fv(["upgen bench"] + argv)
  if fv.config is None:
    raise errors.ConfigError("--config is required")
  return fv.config, fv


def _common_flags(fv) -> None:
  flags.DEFINE_integer("image_grid", 16, "Synthetic image grid side (configs reading data).",
                       flag_values=fv)
  flags.DEFINE_integer("image_vocab", 8192, "Synthetic image codebook size.", flag_values=fv)
  flags.DEFINE_integer("text_vocab", 32768, "Synthetic text vocabulary.", flag_values=fv)
  flags.DEFINE_integer("image_size", 0, "Synthetic image side of pixel families (0: the "
                       "reader's default, 32).", flag_values=fv)
  flags.DEFINE_float("peak_tflops", None, "Peak TFLOP/s per device (default: from the "
                     "device kind, e.g. 989 for an H100).", flag_values=fv)
  flags.DEFINE_float("bandwidth_tbs", None, "Memory bandwidth TB/s per device (default: "
                     "from the device kind).", flag_values=fv)
  flags.DEFINE_string("json", None, "Append result lines (JSON) to this file.", flag_values=fv)


def _write_json(path: Optional[str], rows: list[dict], argv: list[str]) -> None:
  if not path:
    return
  stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
  with open(path, "a") as f:
    for row in rows:
      f.write(json.dumps(dict(row, command="upgen bench " + " ".join(argv), date=stamp)) + "\n")


def _print_train(r: dict) -> None:
  print(f"device: {r['device']}\nconfig: {r['config']}:{r['size']}  {r['num_params']:,} params  "
        f"batch {r['batch_size']} x {r['tokens_per_example']} tokens  dtype {r['dtype']} "
        f"(params {r['param_dtype']})")
  mem = f"{r['peak_memory_gib']:.2f} GiB" if r["peak_memory_gib"] else "n/a on this backend"
  print(f"step: {r['step_ms']:.1f} ms (compile {r['compile_s']:.1f} s)  "
        f"{r['tokens_per_s']:,.0f} tokens/s  {r['examples_per_s']:,.1f} examples/s  "
        f"peak memory {mem}")
  if "flops_per_example" in r:
    print(f"FLOPs per example (forward + backward):\n{r['flops_terms']}")
    line = f"achieved: {r['tflops_per_s']:.2f} TFLOP/s"
    if "mfu" in r:
      line += (f"  MFU {100 * r['mfu']:.1f}% of {jax.device_count()} x "
               f"{r['peak_tflops_per_device']:.0f} TFLOP/s")
    print(line)


def _print_sample(r: dict) -> None:
  bounds = "".join(f"  {name} bound {r[key]:,.1f} img/s" for name, key in
                   (("FLOP", "flop_bound_images_per_s"),
                    ("bandwidth", "bandwidth_bound_images_per_s")) if key in r)
  print(f"batch {r['batch_size']:>4}: {r['seconds'] * 1e3:9.1f} ms  {r['images_per_s']:9.2f} "
        f"images/s  {r['image_tokens_per_s']:11,.0f} image tokens/s{bounds}")


def main(argv: Optional[list[str]] = None) -> int:
  argv = list(argv or [])
  if not argv or argv[0] not in ("train", "sample", "data"):
    print(USAGE, file=sys.stderr)
    return 2
  command, rest = argv[0], argv[1:]
  if command == "data":
    return _main_data(rest)

  def extra(fv):
    _common_flags(fv)
    if command == "train":
      flags.DEFINE_integer("steps", 10, "Timed steps.", flag_values=fv)
    else:
      flags.DEFINE_string("batch_sizes", "1,8,32", "Comma-separated batch sizes.",
                          flag_values=fv)
      flags.DEFINE_integer("repeats", 3, "Timed calls per batch size (median).", flag_values=fv)

  try:
    raw, fv = _load_config(rest, extra)
  except flags.Error as e:
    raise errors.ConfigError(str(e)) from e
  except (AttributeError, KeyError) as e:
    raise errors.ConfigError(override_error(rest, e)) from e
  setup = setup_for(raw, fv.image_grid, fv.image_vocab, fv.text_vocab, fv.image_size)
  config = raw
  peak_flops, bandwidth = _device_peaks(fv.peak_tflops, fv.bandwidth_tbs)
  if command == "train":
    result = bench_train(config, setup, fv.steps, peak_flops)
    _print_train(result)
    _write_json(fv.json, [result], argv)
  else:
    sizes = [int(s) for s in fv.batch_sizes.split(",") if s]
    rows = bench_sample(config, setup, sizes, fv.repeats, peak_flops, bandwidth)
    print(f"device: {rows[0]['device']}\nconfig: {config.model.family}:"
          f"{config.model.get('size', '')}  sample {rows[0]['sample']}")
    for r in rows:
      _print_sample(r)
    if rows and "cost" in rows[-1]:
      print(f"cost at batch {rows[-1]['batch_size']}: {rows[-1]['cost']}")
    _write_json(fv.json, rows, argv)
  return 0


def _main_data(argv: list[str]) -> int:
  parser = errors.ArgumentParser(prog="upgen bench data")
  parser.add_argument("--data-dir", required=True)
  parser.add_argument("--split", default="train")
  parser.add_argument("--batch-size", type=errors.whole(1), default=64)
  parser.add_argument("--seconds", type=errors.number(0), default=10.0)
  parser.add_argument("--config", help="Also time this config's train step (configs/x.py:arg).")
  args = parser.parse_args(argv)
  result = bench_data(args.data_dir, args.split, args.batch_size, args.seconds)
  print(f"data: {result['records_per_sec_per_process']:.0f} records/s per process "
        f"(batch {args.batch_size}, split {args.split})")
  if args.config:
    path, _, arg = config_path(args.config).partition(":")
    spec = importlib.util.spec_from_file_location("bench_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(arg) if arg else module.get_config()
    config.data.dir = args.data_dir
    step_s = time_train_steps(config)
    consumed = config.data.batch_size / step_s / jax.process_count()
    print(f"train step: {step_s * 1e3:.1f} ms/step -> consumes {consumed:.0f} records/s "
          "per process")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
