"""One prepared accelerator measurement (#15): training MFU of the large configs with each
speed lever, sampling speed, and the peer baselines of ../shared/peers beside them, in one
process that stops itself before --deadline seconds.

  python3 scripts/gpu_measure.py --out results.jsonl --peers .peers --deadline 500
  ONLY=upgen_cudnn,peer_torch_b64 python3 scripts/gpu_measure.py ...   # some items, in order

"UPGen-L before" (#33: the code before the issue's changes) runs from an exported tree of
that commit in --before (default .before, carried with the working tree), prepared here:

  mkdir -p .before && git archive BEFORE_COMMIT | tar -x -C .before   # BEFORE_COMMIT below

(scripts/gpu_measure.sh sets the environment and installs the carried wheels first.)

Every upgen program is lowered at start-up (one thread) and compiled on a pool of threads
while the first peer runs, so the 24-layer compiles overlap instead of queueing; the GPU
runs one timed thing at a time, in the priority order of `plan`. Each result is a JSON
line written as soon as it exists; an item that would not finish before the deadline is
recorded as skipped, so dropping happens from the end. After the lever variants, the levers
that helped are combined into one more variant (and the decoder-only family gets the same
settings). --quick runs the same plan on tiny shapes (CPU): the rehearsal before a lease.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import threading
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

LARGE_SHAPES = ["--image_grid", "16", "--image_vocab", "32768", "--text_vocab", "32768"]
QUICK_SHAPES = ["--image_grid", "4", "--image_vocab", "64", "--text_vocab", "128"]
# Unrolled layers: scanning them cost 28% of the step on the H200 (docs/performance.md).
BASE = ["--config.model.attention_impl=cudnn", "--config.model.scan_layers=false",
        "--config.data.batch_size=64"]
# UPGen's linear joint mask ratio masks half of the positions on average (a batch of 64
# deviates by about 0.04), so a 0.7 buffer overflows (and falls back) practically never.
LEVERS = {
    "masked_logits": ["--config.loss.logits_capacity=0.7"],
    "chunked_ce": ["--config.loss.logits_chunks=8"],
    "masked_chunked": ["--config.loss.logits_capacity=0.7", "--config.loss.logits_chunks=4"],
    "bf16_params": ["--config.model.param_dtype=bfloat16"],
    "batch128": ["--config.data.batch_size=128"],
    "batch128_remat": ["--config.data.batch_size=128", "--config.model.remat=dots_no_batch"],
}
COMMON_LEVERS = ("bf16_params", "batch128", "batch128_remat")  # Not UPGen's own loss keys.
BEFORE_COMMIT = "701bc5e"  # #33 items 1 and 4 (measuring only); its step is the one before.


def plan():
  """(kind, name, spec) in priority order. kind: peer (argv, timeout), train (config,
  overrides), sample (config, overrides, batch sizes), best (round two, built from results)."""
  up, da = "configs/upgen.py:large", "configs/dalle.py:large"
  items = [("peer", "peer_jax_cudnn_b64", (["peer_mfu_jax.py", "64", "cudnn"], 150)),
           ("train", "upgen_xla", (up, ["--config.model.attention_impl=xla"] + BASE[1:])),
           ("train", "upgen_cudnn", (up, BASE)),
           # Dropout off, as the peer has none (docs/performance.md: 62% of the extra bytes).
           ("train", "upgen_cudnn_dropout0", (up, BASE + ["--config.model.dropout_rate=0"])),
           ("before", "upgen_cudnn_before_33", (up, BASE))]
  items += [("train", f"upgen_{k}", (up, BASE + v)) for k, v in LEVERS.items()]
  items += [("peer", "peer_torch_b64", (["peer_mfu_torch.py", "64"], 200)),
            ("best", "upgen_best", (up, BASE)),
            ("best", "dalle_best", (da, BASE)),
            ("train", "bart_cudnn", ("configs/bart.py:large", BASE)),
            ("sample", "upgen_sample", (up, BASE[:2], [16, 64, 256])),
            ("peer", "peer_maskgit_jax", (["peer_sample_jax.py", "16", "64", "256"], 120)),
            ("sample", "dalle_sample_g0", (da, BASE[:2] + ["--config.sample.guidance_scale=0",
                                                         "--config.sample.top_k=64"],
                                           [1, 8, 64])),
            ("peer", "peer_hf_generate", (["peer_ar_hf.py", "1", "8", "64"], 100)),
            ("sample", "dalle_sample_g0_bf16", (da, BASE[:2] + [
                "--config.sample.guidance_scale=0", "--config.sample.top_k=64",
                "--config.model.param_dtype=bfloat16"], [1, 8, 64])),
            ("train", "upgen_cudnn_scanned", (up, BASE[:1] + BASE[2:] + [
                "--config.model.scan_layers=true"])),
            ("peer", "peer_jax_xla_b64", (["peer_mfu_jax.py", "64", "xla"], 120))]
  return items


def quick(item):
  """The rehearsal's version of an item: tiny config and shapes, XLA attention, the CPU peer."""
  kind, name, spec = item
  if kind == "peer":
    return kind, name, (["peer_tiny_cpu.py", "8"], 120)
  config, overrides = spec[0].replace(":large", ":tiny"), [
      o.replace("=cudnn", "=xla").replace("batch_size=128", "batch_size=16")
      .replace("batch_size=64", "batch_size=8") for o in spec[1]]
  return kind, name, (config, overrides) + tuple(
      [[2, 4]] if kind == "sample" else [])


class Run:
  def __init__(self, args):
    self.args = args
    self.t0 = time.time()
    self.out = open(args.out, "a")
    self.results: dict[str, dict] = {}
    self.lock = threading.Lock()

  def left(self) -> float:
    return self.args.deadline - (time.time() - self.t0)

  def record(self, name: str, row: dict) -> None:
    row = dict(row, item=name, t=round(time.time() - self.t0, 1))
    with self.lock:
      self.results[name] = row
      self.out.write(json.dumps(row, default=str) + "\n")
      self.out.flush()
    brief = {k: row[k] for k in ("status", "step_ms", "tokens_per_s", "mfu", "images_per_s",
                                 "compile_s", "error", "lines") if k in row}
    print(f"[{row['t']:6.1f}s] {name}: {brief}", flush=True)


def lower(kind, spec, shapes):
  """The item's program, lowered: `spec` = (config, overrides[, batch sizes])."""
  from upgen.tools import bench
  raw, fv = bench._load_config(["--config", spec[0]] + list(spec[1]) + shapes,
                               bench._common_flags)
  setup = bench.setup_for(raw, fv.image_grid, fv.image_vocab, fv.text_vocab, fv.image_size)
  if kind == "sample":
    return bench.lower_sample(raw, setup, spec[2])
  return bench.lower_train(raw, setup)


def run_peer(run: Run, name: str, argv: list[str], timeout: float) -> None:
  timeout = min(timeout, run.left() - 5)
  if timeout < 20:
    run.record(name, {"status": "skipped", "error": "no time left"})
    return
  env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false")
  start = time.time()
  try:
    proc = subprocess.run([sys.executable, os.path.join(run.args.peers, argv[0])] + argv[1:],
                          capture_output=True, text=True, timeout=timeout, env=env)
    lines = [l for l in proc.stdout.splitlines() if l.strip()]
    row = {"status": "ok" if proc.returncode == 0 else f"rc {proc.returncode}",
           "lines": lines[-4:], "stderr_tail": proc.stderr[-600:] if proc.returncode else ""}
  except subprocess.TimeoutExpired:
    row = {"status": "timeout", "error": f"over {timeout:.0f} s"}
  row.update(bench="peer", command=" ".join(argv), wall_s=round(time.time() - start, 1))
  run.record(name, row)


def run_before(run: Run, name: str, spec: tuple, shapes: list[str], steps: int) -> None:
  """`upgen bench train` of the exported tree in --before (BEFORE_COMMIT's code), in its own
  process: the same config, overrides and shapes as this run's items."""
  tree = run.args.before
  if not os.path.isdir(os.path.join(tree, "upgen")):
    run.record(name, {"status": "skipped", "error": f"no exported tree in {tree} (docstring)"})
    return
  timeout = min(240.0, run.left() - 5)
  if timeout < 30:
    run.record(name, {"status": "skipped", "error": "no time left"})
    return
  out = os.path.abspath(run.args.out + f".{name}.jsonl")
  argv = ["bench", "train", "--config", spec[0], *spec[1], *shapes, "--steps", str(steps),
          "--json", out]
  env = dict(os.environ, PYTHONPATH=os.path.abspath(tree))
  start = time.time()
  try:
    proc = subprocess.run([sys.executable, "-m", "upgen.cli", *argv], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=timeout)
    rows = [json.loads(l) for l in open(out)] if os.path.exists(out) else []
    row = dict(rows[-1], status="ok") if proc.returncode == 0 and rows else {
        "status": f"rc {proc.returncode}", "stderr_tail": proc.stderr[-800:]}
  except subprocess.TimeoutExpired:
    row = {"status": "timeout", "error": f"over {timeout:.0f} s"}
  row.update(commit=BEFORE_COMMIT, overrides=spec[1], wall_s=round(time.time() - start, 1))
  run.record(name, row)


def best_overrides(results: dict) -> tuple[list[str], list[str]]:
  """The levers that beat the cuDNN baseline, combined: (upgen overrides, the subset that
  applies to every family)."""
  def speed(name):
    r = results.get(f"upgen_{name}", {})
    return r.get("tokens_per_s", 0.0) if r.get("status") == "ok" else 0.0
  base = speed("cudnn")
  if not base:
    return [], []
  chosen, common = [], []
  logits = max(("masked_logits", "chunked_ce", "masked_chunked"), key=speed)
  if speed(logits) > 1.01 * base:
    chosen += LEVERS[logits]
  if speed("bf16_params") > 1.01 * base:
    chosen += LEVERS["bf16_params"]
    common += LEVERS["bf16_params"]
  batch = max(("batch128", "batch128_remat"), key=speed)
  if speed(batch) > 1.01 * base:
    chosen += LEVERS[batch]
    common += LEVERS[batch]
  return chosen, common


def main(argv=None) -> int:
  parser = argparse.ArgumentParser()
  parser.add_argument("--out", required=True)
  parser.add_argument("--peers", default=".peers")
  parser.add_argument("--deadline", type=float, default=500.0)
  parser.add_argument("--workers", type=int, default=6)
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--before", default=".before",
                      help="exported tree of BEFORE_COMMIT for the 'before' item")
  args = parser.parse_args(argv)
  run = Run(args)
  import jax
  from upgen.tools import bench
  shapes = QUICK_SHAPES if args.quick else LARGE_SHAPES
  items = [quick(i) for i in plan()] if args.quick else plan()
  if os.environ.get("ONLY"):  # A re-run of some items, in this order: ONLY=name,name,...
    named = {i[1]: i for i in items}
    items = [named[n] for n in os.environ["ONLY"].split(",")]
  peak, bandwidth = bench._device_peaks(None, None)
  run.record("device", {"status": "ok", "device": bench._device_line(), "jax": jax.__version__,
                        "xla_flags": os.environ.get("XLA_FLAGS", ""), "peak_flops": peak,
                        "bandwidth": bandwidth})
  pool = concurrent.futures.ThreadPoolExecutor(args.workers)
  futures: dict[str, concurrent.futures.Future] = {}
  ready = threading.Event()

  def submit(name, kind, spec):
    try:
      program = lower(kind, spec, shapes)
      program.overrides = list(spec[1])
    except Exception as e:  # pylint: disable=broad-except
      failed = concurrent.futures.Future()
      failed.set_exception(e)
      futures[name] = failed
      return
    futures[name] = pool.submit(program.compile)

  def lower_all():
    for kind, name, spec in items:
      if kind in ("train", "sample"):
        submit(name, kind, spec)
    ready.set()

  threading.Thread(target=lower_all, daemon=True).start()

  def wait(name):
    while name not in futures and run.left() > 0:
      time.sleep(0.2)
    return futures[name].result(timeout=max(run.left() - 10, 1))

  def submit_round2():
    """Round two, compiled while the next peer runs: the levers that helped, combined."""
    ready.wait(timeout=max(run.left() - 30, 1))
    chosen, common = best_overrides(run.results)
    for kind, name, spec in items:
      if kind == "best":
        extra = chosen if name.startswith("upgen") else common
        if extra or not name.startswith("upgen"):
          submit(name, "train", (spec[0], list(spec[1]) + extra))

  for kind, name, spec in items:
    if kind == "best" and not any(k == "best" and n in futures for k, n, _ in items):
      submit_round2()
    if kind == "peer" and name == "peer_torch_b64":
      submit_round2()
    if run.left() < 15:
      run.record(name, {"status": "skipped", "error": "deadline"})
      continue
    try:
      if kind == "peer":
        run_peer(run, name, *spec)
      elif kind == "before":
        run_before(run, name, spec, shapes, args.steps)
      elif kind == "train":
        row = bench.time_train(wait(name), args.steps, peak)
        run.record(name, dict(row, status="ok", overrides=spec[1]))
      elif kind == "sample":
        rows = bench.time_sample(wait(name), 3, peak, bandwidth)
        for r in rows:
          run.record(f"{name}_b{r['batch_size']}", dict(r, status="ok", overrides=spec[1]))
      elif kind == "best":
        if name not in futures:
          run.record(name, {"status": "skipped", "error": "no lever beat the baseline"})
          continue
        program = wait(name)
        row = bench.time_train(program, args.steps, peak)
        run.record(name, dict(row, status="ok", overrides=program.overrides))
    except Exception as e:  # pylint: disable=broad-except
      run.record(name, {"status": "error", "error": f"{type(e).__name__}: {e}"[:800],
                        "trace": traceback.format_exc()[-1500:]})
  if ready.is_set():
    for name, f in futures.items():
      if f.done() and not f.exception():
        program = f.result()
        run.record("compile_" + name, {"status": "ok", "compile_s": program.compile_s})
  run.record("end", {"status": "ok"})
  pool.shutdown(wait=False, cancel_futures=True)
  os._exit(0)  # Compiles still running are abandoned, not waited for.


if __name__ == "__main__":
  sys.exit(main())
