"""The family-agnostic training loop.

`train(config, workdir)` builds the family against the data it reads (families.build), the
mesh and a sharded state (or restores the latest checkpoint, data iterator included), then
runs the pure `train_step` under jit with donated state. Logging reads step n's metrics
after step n+1 has been dispatched, so the host never stalls the device. Nothing here knows
a family or a batch layout: the family's reader supplies batches, the family its loss.
"""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import signal
import threading
import time
from typing import Any

import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
import tqdm

from upgen import errors
from upgen import families
from upgen import rundir
from upgen.data.spec import DataSpec
from upgen.evaluators import registry
from upgen.runtime import checkpoint as ckpt_lib
from upgen.runtime import init_from
from upgen.runtime import mesh as mesh_lib
from upgen.runtime import optimizer as optimizer_lib
from upgen.runtime import param_groups
from upgen.runtime import state as state_lib
from upgen.runtime import writers
from upgen.train import preview as preview_lib
from upgen.train import step as step_lib

log = logging.getLogger("upgen.train")


class NonFiniteLossError(errors.UserError, RuntimeError):
  pass


class _Preemption:
  """Turns SIGTERM into a flag the loop checks between steps (then checkpoint and exit)."""

  def __init__(self):
    self.requested = threading.Event()
    self._previous = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, lambda *_: self.requested.set())
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def agreed(self, out_of_time: bool, step: int, every: int) -> tuple[bool, bool]:
    """(preempted, out of time), the same on every process: each is True once it is True on
    any process (clocks differ; a process that stopped alone would hang the others).
    With several processes the flags are exchanged only every `every` steps: the exchange
    waits for the step in flight, so doing it each step would stall the host's dispatch."""
    flags = np.asarray([self.requested.is_set(), out_of_time])
    if jax.process_count() > 1:
      if step % every:
        return False, False
      flags = np.any(multihost_utils.process_allgather(flags), axis=0)
    return bool(flags[0]), bool(flags[1])


def build(config: ml_collections.ConfigDict) -> families.Setup:
  """The family of config.model.family, built against the data its reader finds."""
  family = families.get_family(config.model.family)
  return families.build(config, family.reads.spec(config.data), family)


def check_resume(saved: tuple[ml_collections.ConfigDict, DataSpec],
                 config: ml_collections.ConfigDict, spec: DataSpec, workdir: str) -> None:
  """A run resumes with the same architecture and data sizes; a changed config.loss (or
  optimizer, schedule, ...) is allowed and logged."""
  saved_config, saved_spec = saved
  old, new = saved_config.model.to_dict(), config.model.to_dict()
  diffs = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
  if diffs:
    k = diffs[0]
    raise ValueError(
        f"{workdir}/config.json: config.model.{k}={old.get(k)!r} there but {new.get(k)!r} "
        "now; resume with the same model or use a new --workdir")
  changed = saved_spec.differences(spec)
  if changed:
    k = changed[0]
    raise ValueError(
        f"{workdir}/data_spec.json: {k}={getattr(saved_spec, k)!r} there but "
        f"{getattr(spec, k)!r} in the data now (config.data.dir={config.data.dir}); resume "
        "on records of the same tokenizers and lengths or use a new --workdir")
  if ckpt_lib.uses_ema(saved_config) != ckpt_lib.uses_ema(config):
    raise ValueError(
        f"{workdir}/config.json: config.optim.ema_decay="
        f"{saved_config.optim.get('ema_decay', 0.0)!r} there but "
        f"{config.optim.get('ema_decay', 0.0)!r} now; an EMA cannot be added to or dropped "
        "from a run's checkpoints (its decay may change while it stays on)")
  old_loss = saved_config.get("loss", ml_collections.ConfigDict()).to_dict()
  new_loss = config.loss.to_dict()
  for k in sorted(set(old_loss) | set(new_loss)):
    if old_loss.get(k) != new_loss.get(k):
      log.info("resuming with config.loss.%s=%r (was %r)", k, new_loss.get(k), old_loss.get(k))


def _global_batch(batch: dict, sharding, batch_size: int) -> dict:
  """This process's rows (mesh_lib.process_rows) -> global arrays of batch_size rows."""
  return {k: jax.make_array_from_process_local_data(
      sharding, np.asarray(v), (batch_size,) + np.shape(v)[1:]) for k, v in batch.items()}


# config.train.fit_to_time: the speed is measured over steps (FIT_FROM, fit_at], fit_at
# within the warm-up (where the learning rate does not depend on the total), so the fitted
# run's schedule is the one a run configured with that many steps has from its first step.
FIT_FROM, FIT_AT_MOST, FIT_AT_LEAST = 3, 50, 12
FIT_MARGIN = 0.02  # Of the time left: checkpoints and previews inside the loop.


def fit_at(config: ml_collections.ConfigDict) -> int:
  """The step at which config.train.fit_to_time fits the run's steps."""
  return min(max(int(config.optim.warmup_steps), FIT_AT_LEAST), FIT_AT_MOST)


def fitted_steps(*, budget_s: float, elapsed_s: float, done: int, seconds_per_step: float,
                 most: int) -> int:
  """The steps a run holds: `done`, and as many more as the rest of the budget fits at the
  measured speed (less FIT_MARGIN); at most `most`, at least one more."""
  more = (budget_s - elapsed_s) * (1 - FIT_MARGIN) / max(seconds_per_step, 1e-9)
  return int(min(most, done + max(1, int(more))))


def _read_fitted(workdir: str) -> Any:
  path = os.path.join(workdir, rundir.FITTED_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def evaluate(config, eval_iter_fn, batch_sharding, eval_fn, params) -> dict:
  """Mean eval metrics over config.train.eval_batches validation batches."""
  try:
    it = eval_iter_fn()
  except (FileNotFoundError, KeyError, ValueError) as e:
    log.warning("no validation data (%s); skipping eval", e)
    return {}
  totals, n = {}, 0
  rng = jax.random.key(config.seed + 1)
  for i, batch in enumerate(it):
    if i >= config.train.eval_batches:
      break
    out = jax.device_get(eval_fn(
        params, _global_batch(batch, batch_sharding, config.data.batch_size),
        jax.random.fold_in(rng, i)))
    for k, v in out.items():
      totals[k] = totals.get(k, 0.0) + float(v)
    n += 1
  return {f"val_{k}": v / n for k, v in totals.items()} if n else {}


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains (or resumes) the run in `workdir`. Returns a summary of the run."""
  setup = build(config)
  family, spec = setup.family, setup.spec
  try:
    saved = ckpt_lib.load_run_config(workdir)
  except FileNotFoundError:
    saved = None
  start_from = config.train.get("init_from", "")  # Configs written before it lack it.
  if start_from and os.path.realpath(start_from) == os.path.realpath(workdir):
    raise errors.ConfigError(f"config.train.init_from={start_from} is this run's own "
                             "directory; a run starts from another one")
  if saved is not None:
    check_resume(saved, config, spec, workdir)
  fit = bool(config.train.get("fit_to_time", False))
  if fit and not config.train.max_minutes > 0:
    raise errors.ConfigError("config.train.fit_to_time=True needs config.train.max_minutes > 0 "
                             "(the budget the steps are fitted to)")
  fitted = _read_fitted(workdir) if fit else None
  if fitted is not None:  # Resuming a fitted run: its schedule's length stays as fitted.
    config.train.steps = int(fitted["steps"])
  ckpt_lib.save_run_config(workdir, config, spec)

  mesh = mesh_lib.make_mesh(config.mesh)
  tx = optimizer_lib.for_setup(setup, config.optim, config.train.steps)
  ema = ckpt_lib.uses_ema(config)
  abstract, shardings = state_lib.abstract_state(setup, tx, mesh, config.mesh, ema)
  batch_sharding = mesh_lib.batch_sharding(mesh, config.mesh)
  rows = mesh_lib.process_rows(batch_sharding, config.data.batch_size)
  train_iter = family.reads.train_iterator(config, spec, rows)
  eval_iter_fn = functools.partial(family.reads.eval_iterator, config, spec,
                                   config.data.val_split, rows)

  checkpointer = ckpt_lib.Checkpointer(workdir, keep=config.train.keep_checkpoints)
  latest = checkpointer.latest_step()
  if latest is not None:
    _, restored, data_state = checkpointer.restore(ckpt_lib.state_dict(abstract), latest)
    state = state_lib.TrainState(tx=tx, **restored)
    if data_state:
      train_iter.set_state(data_state)
    writers.truncate_metrics(workdir, latest)
    log.info("resumed %s from step %d", workdir, latest)
  else:
    if start_from:
      init_from.check_architecture(start_from, config.model)
      take = init_from.group_names(config.train.get("init_groups", ""),
                                   param_groups.resolve_groups(family, setup.model_config))
    state = state_lib.create_state(setup, tx, mesh, config.mesh, jax.random.key(config.seed),
                                   ema)
    if start_from:
      state = state.replace(params=init_from.apply(
          state.params, start_from, take, config.train.get("init_new_rows", "random")))
      if ema:
        state = state.replace(ema_params=jax.tree.map(lambda p: p.copy(), state.params))
  step = int(jax.device_get(state.step))
  num_params = state_lib.count_params(state.params)

  replicated = mesh_lib.replicated(mesh)
  loss_fn = setup.loss_fn()

  def programs(tx, total: int):
    """The jitted train and eval steps for an optimizer whose schedule runs `total` steps."""
    state_shardings = state_lib.TrainState(tx=tx, **ckpt_lib.state_dict(shardings))
    p_train = jax.jit(
        functools.partial(
            step_lib.train_step, loss_fn=loss_fn, grad_accum_steps=config.optim.grad_accum_steps,
            schedule=optimizer_lib.learning_rate_schedule(config.optim, total),
            ema_decay=float(config.optim.get("ema_decay", 0.0) or 0.0)),
        in_shardings=(state_shardings, batch_sharding, replicated),
        out_shardings=(state_shardings, replicated), donate_argnums=0)
    p_eval = jax.jit(functools.partial(step_lib.eval_step, loss_fn=loss_fn, step=total),
                     out_shardings=replicated)
    return p_train, p_eval

  p_train, p_eval = programs(tx, int(config.train.steps))
  rng = jax.random.key(config.seed)
  writer = writers.MetricWriter(workdir)
  previewer = preview_lib.make(config, setup, replicated)
  total = int(config.train.steps)
  tokens_per_batch = family.reads.tokens_per_example(spec) * config.data.batch_size
  progress = None
  if config.train.progress and jax.process_index() == 0:
    progress = tqdm.tqdm(total=total, initial=step, desc=f"train {family.name}",
                         dynamic_ncols=True)
  log.info("%s: %d parameters, mesh %s, steps %d -> %d", family.name, num_params,
           dict(mesh.shape), step, total)

  evaluators = registry.build(config, setup)

  def sampled_params():
    """What samplers and evaluators use: the EMA where the run keeps one."""
    return state.params if state.ema_params is None else state.ema_params

  def run_eval() -> dict:
    out = evaluate(config, eval_iter_fn, batch_sharding, p_eval, state.params)
    if state.ema_params is not None:
      out.update({k.replace("val_", "val_ema_", 1): v for k, v in evaluate(
          config, eval_iter_fn, batch_sharding, p_eval, state.ema_params).items()})
    return {**out, **registry.run(evaluators, sampled_params())}

  def save(at_step: int) -> None:
    checkpointer.save(at_step, ckpt_lib.state_dict(state), train_iter.get_state(), force=True)

  def write_preview(at_step: int) -> None:
    grid = previewer(sampled_params(),
                     lambda: _global_batch(next(iter(eval_iter_fn())), batch_sharding,
                                           config.data.batch_size),
                     jax.random.key(config.seed + 2))
    if grid is not None:
      writer.write_images(at_step, {"samples": grid})

  interval: dict[str, float] = {}
  interval_n, interval_examples, interval_tokens = 0, 0, 0
  t_interval = time.perf_counter()
  t_start = time.perf_counter()
  pending = None  # (step number after the update, device metrics) of the last step.
  stopped_reason = "completed"
  last_metrics: dict[str, float] = {}

  def flush_interval(done_step: int) -> None:
    nonlocal interval, interval_n, interval_examples, interval_tokens, t_interval
    if not interval_n:
      return
    dt = time.perf_counter() - t_interval
    row = {k: v / interval_n for k, v in interval.items()}
    row["examples_per_sec"] = interval_examples / dt
    if interval_tokens:
      row["tokens_per_sec"] = interval_tokens / dt
    row["steps_per_sec"] = interval_n / dt
    writer.write_scalars(done_step, row)
    interval, interval_n, interval_examples, interval_tokens = {}, 0, 0, 0
    t_interval = time.perf_counter()

  def consume(done_step: int, metrics_dev) -> None:
    """Host side of a finished step: non-finite check, interval means, logging."""
    nonlocal interval_n, last_metrics
    m = {k: float(v) for k, v in jax.device_get(metrics_dev).items()}
    if m.pop("finite") < 1.0:
      msg = (f"non-finite loss at step {done_step} (loss={m.get('loss')}, "
             f"grad_norm={m.get('grad_norm')}); parameters were not updated")
      if config.train.on_nonfinite == "stop":
        raise NonFiniteLossError(
            msg + f". Stopping; the latest checkpoint ({checkpointer.latest_step()}) is "
            "untouched. Set --config.train.on_nonfinite=skip to skip such steps.")
      log.warning("%s; skipping it", msg)
      m["skipped"] = 1.0
    for k, v in m.items():
      interval[k] = interval.get(k, 0.0) + v
    interval_n += 1
    last_metrics = m
    if progress is not None:
      progress.update(1)
      if done_step % max(config.train.log_every, 1) == 0:
        progress.set_postfix(loss=f"{m['loss']:.4f}")
    if done_step % config.train.log_every == 0 or done_step == total:
      flush_interval(done_step)

  first_step = step
  fit_from_t = None
  # Where the wall time went: "loop" is the training loop in all (the steps, their first
  # compile, and the checkpoints, evals and previews inside it, each also counted alone).
  spent = {"checkpoints": 0.0, "evals": 0.0, "previews": 0.0, "first_step": 0.0}

  @contextlib.contextmanager
  def spending(what: str):
    start = time.perf_counter()
    try:
      yield
    finally:
      spent[what] = spent.get(what, 0.0) + time.perf_counter() - start

  def fit_steps(at_step: int, fit_from_t: float) -> None:
    """config.train.fit_to_time: the run's steps from the speed of its own steps so far."""
    nonlocal total, p_train, p_eval, state
    now = time.perf_counter()
    seconds_per_step = (now - fit_from_t) / (at_step - first_step - FIT_FROM)
    # A new count compiles the step again: about as long as the first steps took.
    compile_s = max(fit_from_t - t_start - FIT_FROM * seconds_per_step, 0.0)
    steps = fitted_steps(budget_s=60 * config.train.max_minutes,
                         elapsed_s=now - t_start + compile_s, done=at_step,
                         seconds_per_step=seconds_per_step, most=int(config.train.steps))
    if jax.process_count() > 1:  # Every process takes the first one's count.
      steps = int(multihost_utils.broadcast_one_to_all(np.int32(steps)))
    log.info("fitted %d steps to %.1f minutes at %.1f ms per step (measured over steps "
             "%d-%d)", steps, config.train.max_minutes, 1e3 * seconds_per_step,
             first_step + FIT_FROM, at_step)
    if steps != total:
      config.train.steps = total = steps
      new_tx = optimizer_lib.for_setup(setup, config.optim, total)
      state = state.replace(tx=new_tx)
      p_train, p_eval = programs(new_tx, total)
      if progress is not None:
        progress.total = total
        progress.refresh()
    if jax.process_index() == 0:
      ckpt_lib.save_run_config(workdir, config, spec)
      with open(os.path.join(workdir, rundir.FITTED_FILE), "w") as f:
        json.dump({"steps": total, "at_step": at_step, "budget_minutes":
                   config.train.max_minutes, "seconds_per_step": seconds_per_step,
                   "seconds_before": now - t_start, "compile_seconds": compile_s}, f,
                  indent=2)

  fitting = fit and fitted is None
  with _Preemption() as preemption, mesh_lib.activate(mesh, config.mesh):
    try:
      while step < total:
        batch = next(train_iter)
        state, metrics = p_train(
            state, _global_batch(batch, batch_sharding, config.data.batch_size), rng)
        if pending is not None:
          consume(*pending)
        if step == first_step + 1:  # The first step (its compile) has finished.
          spent["first_step"] = time.perf_counter() - t_start
        if fitting and step == first_step + FIT_FROM:  # Steps so far: compiles, warming up.
          fit_from_t = time.perf_counter()
        elif fitting and step == max(fit_at(config), first_step + 2 * FIT_FROM):
          fit_steps(step, fit_from_t)
          fitting = False
        step += 1
        interval_examples += config.data.batch_size
        interval_tokens += tokens_per_batch
        pending = (step, metrics)
        preempted, out_of_time = preemption.agreed(
            config.train.max_minutes > 0 and
            time.perf_counter() - t_start > 60 * config.train.max_minutes,
            step, config.train.stop_check_every)
        if (step % config.train.checkpoint_every == 0 or step == total or out_of_time
            or preempted):
          consume(*pending)  # A checkpoint only ever holds a state whose step was checked.
          pending = None
          with spending("checkpoints"):
            save(step)
        if config.train.eval_every and step % config.train.eval_every == 0:
          with spending("evals"):
            writer.write_scalars(step, run_eval())
        if previewer is not None and step % config.train.sample_every == 0:
          with spending("previews"):
            write_preview(step)
        if preempted or out_of_time:
          stopped_reason = "preempted" if preempted else "time budget"
          log.warning("stopping at step %d (%s); checkpoint saved", step, stopped_reason)
          break
      if pending is not None:
        consume(*pending)
      flush_interval(step)  # A run stopped early logs its last partial interval.
      spent["loop"] = time.perf_counter() - t_start
      with spending("final_eval"):
        final_eval = {} if stopped_reason == "preempted" else run_eval()
        if final_eval:
          writer.write_scalars(step, final_eval)
      if (previewer is not None and stopped_reason != "preempted"
          and step % config.train.sample_every != 0):
        with spending("previews"):
          write_preview(step)  # The final model's samples.
    finally:
      checkpointer.close()
      writer.close()
      if progress is not None:
        progress.close()
  return {"step": step, "stopped": stopped_reason, "num_params": num_params,
          "seconds": time.perf_counter() - t_start, "last": last_metrics,
          "eval": final_eval, "seconds_in": {k: round(v, 2) for k, v in spent.items()}}
