"""The family-agnostic training loop.

`train(config, workdir)` reads top to bottom: `prepare` builds the family against the data
it reads (families.build), the mesh and a sharded state (fresh, started from INIT, or the
latest checkpoint with its data iterator); then the loop runs the pure `train_step` under
jit with donated state. Logging reads step n's metrics after step n+1 has been dispatched,
so the host never stalls the device. Evaluators (the validation loss among them,
evaluators/registry.py), previews, checkpoints, config.train.fit_to_time
(train/fit_to_time.py) and preemption (train/periodic.py) each keep their own state. Nothing
here knows a family or a batch layout: the family's reader supplies batches, the family its
loss.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import time
from typing import Any, Optional

import jax
import ml_collections

from upgen import errors
from upgen import families
from upgen import flops as flops_lib
from upgen.data.spec import DataSpec
from upgen.evaluators import registry
from upgen.runtime import checkpoint as ckpt_lib
from upgen.runtime import init_from
from upgen.runtime import mesh as mesh_lib
from upgen.runtime import optimizer as optimizer_lib
from upgen.runtime import param_groups
from upgen.runtime import progress as progress_lib
from upgen.runtime import state as state_lib
from upgen.runtime import workdir_lock
from upgen.runtime import writers
from upgen.train import fit_to_time
from upgen.train import periodic
from upgen.train import preview as preview_lib
from upgen.train import step as step_lib

log = logging.getLogger("upgen.train")


class NonFiniteLossError(errors.UserError, RuntimeError):
  pass


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
    raise errors.ConfigError(
        f"{workdir}/config.json: config.model.{k}={old.get(k)!r} there but {new.get(k)!r} "
        "now; resume with the same model or use a new --workdir")
  changed = saved_spec.differences(spec)
  if changed:
    k = changed[0]
    raise errors.ConfigError(
        f"{workdir}/data_spec.json: {k}={getattr(saved_spec, k)!r} there but "
        f"{getattr(spec, k)!r} in the data now (config.data.dir={config.data.dir}); resume "
        "on records of the same tokenizers and lengths or use a new --workdir")
  if ckpt_lib.uses_ema(saved_config) != ckpt_lib.uses_ema(config):
    raise errors.ConfigError(
        f"{workdir}/config.json: config.optim.ema_decay="
        f"{saved_config.optim.get('ema_decay', 0.0)!r} there but "
        f"{config.optim.get('ema_decay', 0.0)!r} now; an EMA cannot be added to or dropped "
        "from a run's checkpoints (its decay may change while it stays on)")
  old_loss = saved_config.get("loss", ml_collections.ConfigDict()).to_dict()
  new_loss = config.loss.to_dict()
  for k in sorted(set(old_loss) | set(new_loss)):
    if old_loss.get(k) != new_loss.get(k):
      log.info("resuming with config.loss.%s=%r (was %r)", k, new_loss.get(k), old_loss.get(k))


@dataclasses.dataclass
class Prepared:
  """A run ready for its loop."""
  setup: families.Setup
  mesh: Any
  shardings: Any  # Of the train state's fields (state_lib.abstract_state).
  batch_sharding: Any
  rows: Any  # This process's rows of each global batch.
  train_iter: Any  # Resumable: get_state / set_state.
  checkpointer: ckpt_lib.Checkpointer
  state: state_lib.TrainState
  fit: bool  # config.train.fit_to_time, and not fitted by an earlier process of the run.


def prepare(config: ml_collections.ConfigDict, workdir: str) -> Prepared:
  """Checks the config against the run directory (resume, init_from, fit_to_time), saves
  it, and builds the mesh, the sharded state and the data iterator: restored from the
  newest intact checkpoint, or fresh (started from config.train.init_from where given).
  Called with the workdir's lock held (`train`)."""
  for key in ("train.steps", "data.batch_size"):
    group, name = key.split(".")
    if int(config[group][name]) < 1:  # A run of no steps would "complete" with nothing saved.
      raise errors.ConfigError(f"config.{key}={config[group][name]}: must be >= 1")
  accum = int(config.optim.get("grad_accum_steps", 1))
  if accum < 1 or config.data.batch_size % accum:
    raise errors.ConfigError(f"config.optim.grad_accum_steps={accum}: must be >= 1 and divide "
                             f"config.data.batch_size={config.data.batch_size}")
  setup = build(config)
  mesh_lib.check(config.mesh)  # Before anything is written.
  try:
    saved = ckpt_lib.load_run_config(workdir)
  except FileNotFoundError:
    saved = None
  start_from = config.train.get("init_from", "")  # Configs written before it lack it.
  if start_from and os.path.realpath(start_from) == os.path.realpath(workdir):
    raise errors.ConfigError(f"config.train.init_from={start_from} is this run's own "
                             "directory; a run starts from another one")
  if saved is not None:
    check_resume(saved, config, setup.spec, workdir)
  fit = bool(config.train.get("fit_to_time", False))
  if fit and not config.train.max_minutes > 0:
    raise errors.ConfigError("config.train.fit_to_time=True needs config.train.max_minutes > 0 "
                             "(the budget the steps are fitted to)")
  fitted = fit_to_time.read_fitted(workdir) if fit else None
  if fitted is not None:  # Resuming a fitted run: its schedule's length stays as fitted.
    config.train.steps = int(fitted["steps"])
  ckpt_lib.save_run_config(workdir, config, setup.spec)

  mesh = mesh_lib.make_mesh(config.mesh)
  tx = optimizer_lib.for_setup(setup, config.optim, config.train.steps)
  ema = ckpt_lib.uses_ema(config)
  abstract, shardings = state_lib.abstract_state(setup, tx, mesh, config.mesh, ema)
  batch_sharding = mesh_lib.batch_sharding(mesh, config.mesh)
  rows = mesh_lib.process_rows(batch_sharding, config.data.batch_size)
  train_iter = setup.family.reads.train_iterator(config, setup.spec, rows)
  # The owner: train() holds the workdir's lock, so leftovers of a killed save are removed
  # and damaged steps set aside (runtime/checkpoint.py).
  checkpointer = ckpt_lib.Checkpointer(workdir, keep=config.train.keep_checkpoints, owner=True)
  if checkpointer.latest_step() is not None:
    latest, restored, data_state = checkpointer.restore(ckpt_lib.state_dict(abstract))
    state = state_lib.TrainState(tx=tx, **restored)
    if data_state:
      train_iter.set_state(data_state)
    writers.truncate_metrics(workdir, latest)
    log.info("resumed %s from step %d", workdir, latest)
  else:
    state = state_lib.create_state(setup, tx, mesh, config.mesh, jax.random.key(config.seed),
                                   ema)
    if start_from:
      state = start_state(state, start_from, config, setup)
  return Prepared(setup, mesh, shardings, batch_sharding, rows, train_iter, checkpointer,
                  state, fit and fitted is None)


def start_state(state: state_lib.TrainState, start_from: str,
                config: ml_collections.ConfigDict, setup: families.Setup
                ) -> state_lib.TrainState:
  """A fresh state with config.train.init_from's parameters (config.train.init_groups of
  them) in place of the initialized ones; the EMA starts as a copy."""
  init_from.check_architecture(start_from, config.model)
  take = init_from.group_names(config.train.get("init_groups", ""),
                               param_groups.resolve_groups(setup.family, setup.model_config))
  state = state.replace(params=init_from.apply(
      state.params, start_from, take, config.train.get("init_new_rows", "random")))
  if state.ema_params is not None:
    state = state.replace(ema_params=jax.tree.map(lambda p: p.copy(), state.params))
  return state


def train_program(config: ml_collections.ConfigDict, run: Prepared, tx: Any, total: int):
  """The jitted train step for an optimizer whose schedule runs `total` steps."""
  state_shardings = state_lib.TrainState(tx=tx, **ckpt_lib.state_dict(run.shardings))
  replicated = mesh_lib.replicated(run.mesh)
  return jax.jit(
      functools.partial(
          step_lib.train_step, loss_fn=run.setup.loss_fn(),
          grad_accum_steps=config.optim.grad_accum_steps,
          schedule=optimizer_lib.learning_rate_schedule(config.optim, total),
          ema_decay=float(config.optim.get("ema_decay", 0.0) or 0.0)),
      in_shardings=(state_shardings, run.batch_sharding, replicated),
      out_shardings=(state_shardings, replicated), donate_argnums=0)


def finite_metrics(metrics_dev: Any, step: int, config: ml_collections.ConfigDict,
                   latest_checkpoint: Optional[int]) -> dict[str, float]:
  """A finished step's metrics on the host; a non-finite step stops the run (the latest
  checkpoint untouched) or, with config.train.on_nonfinite=skip, is logged as skipped."""
  m = {k: float(v) for k, v in jax.device_get(metrics_dev).items()}
  if m.pop("finite") < 1.0:
    msg = (f"non-finite loss at step {step} (loss={m.get('loss')}, "
           f"grad_norm={m.get('grad_norm')}); parameters were not updated")
    if config.train.on_nonfinite == "stop":
      raise NonFiniteLossError(
          msg + f". Stopping; the latest checkpoint ({latest_checkpoint}) is "
          "untouched. Set --config.train.on_nonfinite=skip to skip such steps.")
    log.warning("%s; skipping it", msg)
    m["skipped"] = 1.0
  return m


def step_cost(setup: families.Setup, batch_size: int) -> periodic.StepCost:
  """The model FLOPs of one optimizer step (the family's count, as `upgen bench train`
  prints it) and the devices' peak; an unknown peak is said once, not guessed."""
  count = setup.family.train_flops(setup.model_config) if setup.family.train_flops else None
  kind = jax.devices()[0].device_kind
  peaks = flops_lib.device_peaks(kind)
  if count is not None and peaks is None:
    log.info("perf/mfu is not logged: no peak FLOP/s is known for device kind %r "
             "(upgen/flops.py DEVICE_PEAKS); perf/tflops_per_device is", kind)
  return periodic.StepCost(flops_per_step=count.total * batch_size if count else 0.0,
                           num_devices=jax.device_count(),
                           peak_flops_per_device=peaks[0] if peaks else None)


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains (or resumes) the run in `workdir`, holding its lock (one run per workdir).
  Returns a summary of the run."""
  with workdir_lock.WorkdirLock(workdir):
    return _train(config, workdir)


def _train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  run = prepare(config, workdir)
  setup, state, checkpointer = run.setup, run.state, run.checkpointer
  step = first_step = int(jax.device_get(state.step))
  total = int(config.train.steps)
  num_params = state_lib.count_params(state.params)
  p_train = train_program(config, run, state.tx, total)
  # The parameter norm reads every parameter: computed at the logged steps only.
  p_norm = jax.jit(step_lib.param_norm, out_shardings=mesh_lib.replicated(run.mesh))
  rng = jax.random.key(config.seed)
  global_batch = functools.partial(mesh_lib.global_batch, sharding=run.batch_sharding,
                                   batch_size=config.data.batch_size)
  writer = writers.MetricWriter(workdir)
  interval = periodic.IntervalMetrics(
      writer.write_scalars, examples_per_step=config.data.batch_size,
      tokens_per_step=setup.family.reads.tokens_per_example(setup.spec) *
      config.data.batch_size, cost=step_cost(setup, config.data.batch_size))
  evaluators = registry.build(registry.Context(
      config, setup, run.mesh, run.batch_sharding, run.rows, lambda: total))
  previewer = preview_lib.make(config, setup, mesh_lib.replicated(run.mesh))
  eval_batch = lambda: global_batch(next(iter(setup.family.reads.eval_iterator(
      config, setup.spec, config.data.val_split, run.rows))))
  progress = progress_lib.bar(total, initial=step, desc=f"train {setup.family.name}",
                              unit="steps",
                              disable=not config.train.progress or jax.process_index() != 0)
  log.info("%s: %d parameters, mesh %s, steps %d -> %d", setup.family.name, num_params,
           dict(run.mesh.shape), step, total)

  def logs_at(done_step: int) -> bool:
    return done_step % config.train.log_every == 0 or done_step == total

  def finished(done_step: int, metrics_dev: Any, norm_dev: Any = None) -> None:
    """Host side of a finished step: non-finite check, interval means, progress, logging
    (with the parameter norm `norm_dev` after the step, dispatched where logs_at)."""
    nonlocal last_metrics
    last_metrics = finite_metrics(metrics_dev, done_step, config, checkpointer.latest_step())
    interval.add(last_metrics)
    progress.update(1)
    if done_step % max(config.train.log_every, 1) == 0:
      progress.set_postfix(loss=f"{last_metrics['loss']:.4f}")
    if logs_at(done_step):
      at_step = {} if norm_dev is None else {"param_norm": float(norm_dev)}
      last_metrics.update(at_step)
      interval.flush(done_step, at_step)

  def write_preview(at_step: int) -> None:
    grid = previewer(registry.sampled_params(state), eval_batch,
                     jax.random.key(config.seed + 2))
    if grid is not None:
      writer.write_images(at_step, {"samples": grid})

  t_start = time.perf_counter()
  # Where the wall time went: "loop" is the training loop in all (the steps, their first
  # compile, and the checkpoints, evals and previews inside it, each also counted alone).
  timings = periodic.Timings("checkpoints", "evals", "previews", "first_step")
  fit = fit_to_time.FitToTime(config, first_step=step, start=t_start) if run.fit else None
  # (step number after the update, device metrics, parameter norm or None) of the last step.
  pending = None
  compiles = True  # The next call of p_train compiles it: not the steps' time.
  stopped_reason, last_metrics, final_eval = "completed", {}, {}
  with periodic.Preemption() as preemption, mesh_lib.activate(run.mesh, config.mesh):
    try:
      while step < total:
        batch = global_batch(next(run.train_iter))
        with interval.paused() if compiles else contextlib.nullcontext():
          state, metrics = p_train(state, batch, rng)
        compiles = False
        if pending is not None:
          finished(*pending)
        if step == first_step + 1:  # The first step (its compile) has finished.
          timings.spent["first_step"] = time.perf_counter() - t_start
        fitted = fit.observe(step, time.perf_counter()) if fit is not None else None
        if fitted is not None:
          if fitted != total:  # A new schedule length: a new optimizer and train step.
            config.train.steps = total = fitted
            state = state.replace(tx=optimizer_lib.for_setup(setup, config.optim, total))
            p_train = train_program(config, run, state.tx, total)
            compiles = True
            progress.total = total
            progress.refresh()
          if jax.process_index() == 0:
            ckpt_lib.save_run_config(workdir, config, setup.spec)
          fit.save(workdir)
        step += 1
        interval.dispatched()
        # Dispatched before the next step donates the state.
        pending = (step, metrics, p_norm(state.params) if logs_at(step) else None)
        preempted, out_of_time = preemption.agreed(
            config.train.max_minutes > 0 and step < total and
            time.perf_counter() - t_start > 60 * config.train.max_minutes,
            step, config.train.stop_check_every)  # A budget spent at the last step: done.
        if (step % config.train.checkpoint_every == 0 or step == total or out_of_time
            or preempted):
          finished(*pending)  # A checkpoint only ever holds a state whose step was checked.
          pending = None
          with timings("checkpoints"), interval.paused():
            checkpointer.save(step, ckpt_lib.state_dict(state), run.train_iter.get_state(),
                              force=True)
        if config.train.eval_every and step % config.train.eval_every == 0:
          with timings("evals"), interval.paused():
            writer.write_scalars(step, registry.run(evaluators, state))
        if previewer is not None and step % config.train.sample_every == 0:
          with timings("previews"), interval.paused():
            write_preview(step)
        if preempted or out_of_time:
          stopped_reason = "preempted" if preempted else "time budget"
          log.warning("stopping at step %d (%s); checkpoint saved", step, stopped_reason)
          break
      if pending is not None:
        finished(*pending)
      # A run stopped early logs its last partial interval.
      interval.flush(step, {"param_norm": float(p_norm(state.params))})
      timings.spent["loop"] = time.perf_counter() - t_start
      if stopped_reason != "preempted":
        with timings("final_eval"):
          final_eval = registry.run(evaluators, state)
          if final_eval:
            writer.write_scalars(step, final_eval)
        if previewer is not None and step % config.train.sample_every != 0:
          with timings("previews"):
            write_preview(step)  # The final model's samples.
    finally:
      checkpointer.close()
      writer.close()
      progress.close()
  return {"step": step, "stopped": stopped_reason, "num_params": num_params,
          "seconds": time.perf_counter() - t_start, "last": last_metrics,
          "eval": final_eval, "seconds_in": timings.rounded()}
