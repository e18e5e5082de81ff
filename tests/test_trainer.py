"""The trainer: metrics and checkpoints, exact resume after SIGKILL, non-finite guard,
gradient accumulation, and sharded meshes that match one device."""
import gc
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import optax
import pytest

from configs import upgen as upgen_config
from configs import vqgan as vqgan_config
from tests import token_data
from upgen import errors
from upgen import rundir
from upgen.runtime import checkpoint
from upgen.runtime import restore
from upgen.runtime import mesh as mesh_lib
from upgen.runtime import optimizer
from upgen.runtime import state as state_lib
from upgen.train import step as step_lib
from upgen.train import fit_to_time
from upgen.train import trainer
from upgen.runtime import writers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return token_data.write(str(tmp_path_factory.mktemp("records")))


def _config(data_dir, **overrides):
  c = upgen_config.get_config("tiny")
  c.update_from_flattened_dict({**token_data.tiny_overrides(data_dir), **overrides})
  return c


def test_train_logs_checkpoints_and_learns(data_dir, tmp_path):
  workdir = str(tmp_path / "run")
  c = _config(data_dir, **{"train.steps": 150, "train.log_every": 1, "train.checkpoint_every": 50,
                           "train.keep_checkpoints": 2, "optim.lr": 1e-2})
  summary = trainer.train(c, workdir)
  assert summary["step"] == 150 and summary["stopped"] == "completed"
  spent = summary["seconds_in"]  # Where the time went: the loop and what it holds.
  assert set(spent) == {"loop", "first_step", "checkpoints", "evals", "previews", "final_eval"}
  assert 0 < spent["first_step"] < spent["loop"] and spent["evals"] == spent["previews"] == 0
  assert 0 < spent["checkpoints"] < spent["loop"] < summary["seconds"]
  rows = [r for r in writers.read_metrics(workdir) if "loss" in r]
  assert [r["step"] for r in rows] == list(range(1, 151))
  for key in ("loss_image", "loss_text", "acc_image", "grad_norm", "param_norm",
              "learning_rate", "examples_per_sec", "tokens_per_sec"):
    assert key in rows[0], key
  first = np.mean([r["loss"] for r in rows[:10]])
  last = np.mean([r["loss"] for r in rows[-10:]])
  assert last < first - 0.3, (first, last)
  assert "val_loss" in writers.read_metrics(workdir)[-1]
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["100", "150"]
  saved, spec = checkpoint.load_run_config(workdir)
  assert saved.model.to_dict() == c.model.to_dict()
  assert spec.image_vocab_size == token_data.IMAGE_VOCAB and spec.image_grid == token_data.GRID
  assert spec.image_seq_len == 8 and spec.text_pad_id == 0 and spec.text_seq_len == 6
  # Params restore on their own (what `upgen sample` and tokenizers use).
  _, _, params = restore.restore_params(workdir)
  assert state_lib.count_params(params) == summary["num_params"]
  # The parameter norm is the logged step's own (computed at the logged steps, not a mean).
  assert rows[-1]["param_norm"] == pytest.approx(float(optax.tree.norm(params)), rel=1e-5)
  # Running again with the run complete resumes at 150 and does nothing more.
  again = trainer.train(c, workdir)
  assert again["step"] == 150 and len([r for r in writers.read_metrics(workdir)
                                       if "loss" in r]) == 150


def test_resume_refuses_another_model_or_data_shape_but_not_another_loss(data_dir, tmp_path):
  workdir = str(tmp_path / "run")
  trainer.train(_config(data_dir, **{"train.steps": 2}), workdir)
  with pytest.raises(ValueError, match=r"config\.model\.emb_dim=32 there but 64 now"):
    trainer.train(_config(data_dir, **{"train.steps": 4, "model.emb_dim": 64}), workdir)
  with pytest.raises(ValueError, match=r"data_spec\.json: text_seq_len=6 there but 8 in the "
                                       r"data now"):
    trainer.train(_config(data_dir, **{"train.steps": 4, "data.text_seq_len": 8}), workdir)
  # The objective may change: the run resumes at step 2 with the new weight.
  summary = trainer.train(_config(data_dir, **{"train.steps": 4,
                                               "loss.paired_text_weight": 0.5}), workdir)
  assert summary["step"] == 4
  assert checkpoint.load_run_config(workdir)[0].loss.paired_text_weight == 0.5


def _cli(workdir, data_dir, *extra):
  flags = [f"--config.{k}={v}" for k, v in token_data.tiny_overrides(data_dir).items()]
  return [sys.executable, "-m", "upgen.cli", "train", "--config", "configs/upgen.py:tiny",
          "--workdir", workdir, *flags, *extra]


def _losses(workdir):
  return {r["step"]: r["loss"] for r in writers.read_metrics(workdir) if "loss" in r}


def test_resume_after_sigkill_repeats_the_uninterrupted_losses(data_dir, tmp_path):
  extra = ["--config.train.steps=400", "--config.train.checkpoint_every=50",
           "--config.train.log_every=1", "--config.data.text_dropout=0.2",
           "--config.model.dropout_rate=0.1"]
  straight = str(tmp_path / "straight")
  subprocess.run(_cli(straight, data_dir, *extra), check=True, cwd=ROOT, capture_output=True)

  killed = str(tmp_path / "killed")
  proc = subprocess.Popen(_cli(killed, data_dir, *extra), cwd=ROOT, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    done = max(_losses(killed), default=0) if os.path.exists(
        os.path.join(killed, "metrics.jsonl")) else 0
    if done >= 120:
      break
    time.sleep(0.02)
  assert proc.poll() is None, "the run finished before it could be killed"
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  interrupted_at = max(_losses(killed))
  assert interrupted_at < 400
  ckpt_steps = [int(s) for s in os.listdir(os.path.join(killed, "checkpoints")) if s.isdigit()]
  assert ckpt_steps and max(ckpt_steps) <= interrupted_at

  subprocess.run(_cli(killed, data_dir, *extra), check=True, cwd=ROOT, capture_output=True)
  a, b = _losses(straight), _losses(killed)
  assert sorted(a) == sorted(b) == list(range(1, 401))
  np.testing.assert_allclose([b[s] for s in range(1, 401)], [a[s] for s in range(1, 401)],
                             rtol=1e-6)


def test_fit_to_time_fits_the_steps_within_warmup_and_keeps_the_schedule(data_dir, tmp_path):
  """config.train.fit_to_time: the steps come from the run's own speed, measured within the
  warm-up, so the run trains as one configured with that many steps from its first step;
  config.json and a resume keep the fitted count."""
  with pytest.raises(errors.ConfigError, match="fit_to_time=True needs config.train.max_minutes"):
    trainer.train(_config(data_dir, **{"train.fit_to_time": True}), str(tmp_path / "no"))
  fit_dir = str(tmp_path / "fit")
  keys = {"train.log_every": 1, "train.checkpoint_every": 10_000, "optim.warmup_steps": 12,
          "optim.lr": 1e-2}
  # 12 s: the first step's compile and the 12 steps to the fit fit in it on a loaded machine.
  c = _config(data_dir, **keys, **{"train.steps": 100_000, "train.max_minutes": 0.2,
                                   "train.fit_to_time": True})
  summary = trainer.train(c, fit_dir)
  fitted = json.load(open(os.path.join(fit_dir, rundir.FITTED_FILE)))
  n = fitted["steps"]
  assert fitted["at_step"] == fit_to_time.fit_at(c) == 12 and 12 < n < 100_000
  assert n == fit_to_time.fitted_steps(
      budget_s=12.0, elapsed_s=fitted["seconds_before"] + fitted["compile_seconds"], done=12,
      seconds_per_step=fitted["seconds_per_step"], most=100_000)
  # Fitted to the time: it ends at n, or (on a machine that slowed down) at the budget.
  assert (summary["stopped"], summary["step"]) == ("completed", n) or (
      summary["stopped"] == "time budget" and summary["step"] < n)
  assert json.load(open(os.path.join(fit_dir, "config.json")))["train"]["steps"] == n
  # The same losses as a run told n steps from the start: the schedule is the same.
  fixed_dir = str(tmp_path / "fixed")
  trainer.train(_config(data_dir, **keys, **{"train.steps": summary["step"]}), fixed_dir)
  if summary["step"] < n:  # Then the fixed run needs n for its schedule; compare a prefix.
    trainer.train(_config(data_dir, **keys, **{"train.steps": n}), fixed_dir + "_n")
    fixed_dir += "_n"
  a, b = _losses(fit_dir), _losses(fixed_dir)
  steps = sorted(a)
  assert steps == list(range(1, summary["step"] + 1))
  np.testing.assert_allclose([a[s] for s in steps], [b[s] for s in steps], rtol=1e-6)
  lr = {r["step"]: r["learning_rate"] for r in writers.read_metrics(fit_dir) if "loss" in r}
  schedule = optimizer.learning_rate_schedule(c.optim, n)
  np.testing.assert_allclose([lr[s] for s in steps], [schedule(s - 1) for s in steps],
                             rtol=1e-6)
  # A resume (the same command line) keeps the fitted count and does not fit again.
  again = trainer.train(_config(data_dir, **keys, **{"train.steps": 100_000,
                                                     "train.max_minutes": 0.2,
                                                     "train.fit_to_time": True}), fit_dir)
  assert json.load(open(os.path.join(fit_dir, rundir.FITTED_FILE))) == fitted
  assert again["step"] <= n and json.load(open(os.path.join(fit_dir, "config.json")))[
      "train"]["steps"] == n


@pytest.mark.parametrize("mode", ["stop", "skip"])
def test_nonfinite_loss_never_reaches_a_checkpoint(data_dir, tmp_path, mode):
  workdir = str(tmp_path / mode)
  c = _config(data_dir, **{"train.steps": 12, "train.checkpoint_every": 1,
                           "train.log_every": 1, "optim.lr": 1e30, "optim.grad_clip": 0.0,
                           "optim.warmup_steps": 0, "optim.decay": "constant",
                           "train.on_nonfinite": mode})
  if mode == "stop":
    with pytest.raises(trainer.NonFiniteLossError, match="non-finite loss at step"):
      trainer.train(c, workdir)
  else:
    summary = trainer.train(c, workdir)
    assert summary["step"] == 12
    assert any(r.get("skipped") for r in writers.read_metrics(workdir))
  _, _, params = restore.restore_params(workdir)
  for leaf in jax.tree.leaves(params):
    assert np.all(np.isfinite(np.asarray(leaf)))


def test_grad_accumulation_matches_one_big_batch():
  # Codebook revival pulls codes toward the nearest encoder output *in the batch*, a
  # batch statistic that micro-batches cannot reproduce; every other term is a per-example mean.
  c = vqgan_config.get_config("tiny")
  c.update_from_flattened_dict({"loss.codebook_revive_weight": 0.0, "data.image_size": 8,
                                "model.base_channels": 4, "model.channel_multipliers": (1, 2),
                                "model.num_res_blocks": 0, "model.norm": "none",
                                "model.codebook_size": 8, "model.embedding_dim": 4,
                                "data.batch_size": 8})
  setup = trainer.build(c)
  mesh = mesh_lib.make_mesh(c.mesh)
  tx = optimizer.make_optimizer(c.optim, c.train.steps)
  state = state_lib.create_state(setup, tx, mesh, c.mesh, jax.random.key(0))
  batch = {"image": np.random.default_rng(0).integers(0, 256, (8, 8, 8, 3), dtype=np.uint8)}
  results = []
  for accum in (1, 4):
    with mesh_lib.activate(mesh, c.mesh):
      new_state, metrics = jax.jit(lambda s, b: step_lib.train_step(
          s, b, jax.random.key(1), loss_fn=setup.loss_fn(), grad_accum_steps=accum))(state, batch)
    results.append((new_state.params, float(metrics["loss"]), float(metrics["grad_norm"])))
  assert results[0][1] == pytest.approx(results[1][1], rel=1e-5)
  assert results[0][2] == pytest.approx(results[1][2], rel=1e-4)
  for x, y in zip(jax.tree.leaves(results[0][0]), jax.tree.leaves(results[1][0])):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-6)


_MESH_SCRIPT = """
import json, sys, jax
from configs import upgen as upgen_config
from tests import token_data
from upgen.runtime import writers, mesh as mesh_lib, optimizer, state as state_lib
from upgen.train import trainer
data_dir, workdir, mesh = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
c = upgen_config.get_config("tiny")
c.update_from_flattened_dict(token_data.tiny_overrides(data_dir))
c.update_from_flattened_dict({"train.steps": 5, "train.log_every": 1,
                              "train.checkpoint_every": 5, **mesh})
trainer.train(c, workdir)
losses = [r["loss"] for r in writers.read_metrics(workdir) if "loss" in r]
_, shardings = state_lib.abstract_state(trainer.build(c), optimizer.make_optimizer(c.optim, 5),
                                        mesh_lib.make_mesh(c.mesh), c.mesh)
sharded = sorted({str(s.spec) for s in jax.tree.leaves(shardings) if not s.is_fully_replicated})
print(json.dumps({"losses": losses, "devices": jax.device_count(), "sharded": sharded}))
"""


def _run_mesh(data_dir, workdir, mesh, devices):
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", _MESH_SCRIPT, data_dir, workdir, json.dumps(mesh)],
                       check=True, cwd=ROOT, capture_output=True, text=True, env=env)
  return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.multidevice
def test_data_fsdp_tensor_mesh_matches_one_device(data_dir, tmp_path):
  one = _run_mesh(data_dir, str(tmp_path / "one"), {}, 1)
  mesh = {"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2}
  eight = _run_mesh(data_dir, str(tmp_path / "eight"), mesh, 8)
  assert one["devices"] == 1 and eight["devices"] == 8
  assert not one["sharded"]
  # FSDP on "embed", tensor parallel on heads / mlp / vocab.
  for spec in ("P('fsdp', 'tensor')", "P('fsdp', 'tensor', None)"):
    assert spec in eight["sharded"], eight["sharded"]
  assert len(one["losses"]) == len(eight["losses"]) == 5
  np.testing.assert_allclose(eight["losses"], one["losses"], rtol=2e-5)


# orbax leaves its failed reads' coroutines unawaited (noise, not the error: issue #19).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_checkpoint_errors_say_what_failed(data_dir, tmp_path):
  workdir = str(tmp_path / "run")
  trainer.train(_config(data_dir, **{"train.steps": 2}), workdir)
  # A checkpoint of another model does not fit: a config error, named as such.
  c = _config(data_dir, **{"model.emb_dim": 64})
  setup = trainer.build(c)
  mesh = mesh_lib.make_mesh(c.mesh)
  abstract, _ = state_lib.abstract_state(setup, optimizer.make_optimizer(c.optim, 2), mesh,
                                         c.mesh)
  ckpt = checkpoint.Checkpointer(workdir, async_save=False)
  with pytest.raises(ValueError, match=r"checkpoints/2: the checkpoint does not fit this "
                                       r"config's state \(a changed model\?"):
    ckpt.restore(checkpoint.state_dict(abstract))
  ckpt.close()
  # Damaged files are a read error naming the file and the array, not a config mismatch.
  data_files = [os.path.join(root, name)
                for root, _, names in os.walk(os.path.join(workdir, "checkpoints", "2", "state"))
                for name in names if os.sep + "d" + os.sep in os.path.join(root, name) + os.sep
                and "ocdbt.process_0" in root]
  assert data_files
  for path in data_files:
    with open(path, "r+b") as f:
      f.write(b"\0" * 64)
  with pytest.raises(checkpoint.CheckpointReadError,
                     match=r"checkpoints/2: cannot read the checkpoint: .*Error reading "):
    restore.restore_params(workdir)
  gc.collect()  # orbax's abandoned reads, collected while their warnings are filtered.


def test_mesh_falls_back_to_device_order_only_when_the_layout_does_not_fit(monkeypatch, caplog):
  c = upgen_config.get_config("tiny")

  def no_layout(shape, devices):
    raise ValueError("no physical layout for this shape")

  monkeypatch.setattr(mesh_lib.mesh_utils, "create_device_mesh", no_layout)
  with caplog.at_level("WARNING", logger="upgen.train"):
    mesh = mesh_lib.make_mesh(c.mesh)
  assert list(mesh.devices.flat) == jax.devices()
  assert "plain device order" in caplog.text and "no physical layout" in caplog.text

  def broken(shape, devices):
    raise RuntimeError("backend failure")

  monkeypatch.setattr(mesh_lib.mesh_utils, "create_device_mesh", broken)
  with pytest.raises(RuntimeError, match="backend failure"):
    mesh_lib.make_mesh(c.mesh)


def test_ema_follows_the_parameters_is_checkpointed_and_sampled(data_dir, tmp_path):
  """config.optim.ema_decay keeps an EMA of the parameters: it equals the warmed-up average
  of the trained parameters step by step, resumes exactly, is what restore_params (and so
  `upgen sample`) returns, and cannot be switched on or off in a run that has checkpoints."""
  decay = 0.9
  c = _config(data_dir, **{"train.steps": 6, "optim.ema_decay": decay})
  setup = trainer.build(c)
  tx = optimizer.for_setup(setup, c.optim, 6)
  mesh = mesh_lib.make_mesh(c.mesh)
  state = state_lib.create_state(setup, tx, mesh, c.mesh, jax.random.key(0), ema=True)
  batch = setup.dummy_batch(8)
  step = jax.jit(lambda s, b: step_lib.train_step(s, b, jax.random.key(1),
                                                  loss_fn=setup.loss_fn(), ema_decay=decay))
  expected = jax.tree.map(np.asarray, state.params)
  for n in range(3):
    state, _ = step(state, batch)
    d = min(decay, (1 + n) / (10 + n))
    expected = jax.tree.map(lambda e, p: e + (1 - d) * (np.asarray(p) - e), expected,
                            state.params)
  for e, got in zip(jax.tree.leaves(expected), jax.tree.leaves(state.ema_params)):
    np.testing.assert_allclose(np.asarray(got), e, rtol=1e-5, atol=1e-7)
  assert any(not np.allclose(np.asarray(a), np.asarray(b)) for a, b in
             zip(jax.tree.leaves(state.params), jax.tree.leaves(state.ema_params)))

  # Through the trainer: 3 steps, resume to 6, against 6 straight.
  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  trainer.train(c, straight)
  trainer.train(_config(data_dir, **{"train.steps": 3, "optim.ema_decay": decay}), resumed)
  trainer.train(c, resumed)
  _, _, ema_a = restore.restore_params(straight)
  _, _, ema_b = restore.restore_params(resumed)
  _, _, trained = restore.restore_params(straight, ema=False)
  for a, b in zip(jax.tree.leaves(ema_a), jax.tree.leaves(ema_b)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)
  assert any(not np.allclose(np.asarray(a), np.asarray(b)) for a, b in
             zip(jax.tree.leaves(ema_a), jax.tree.leaves(trained)))
  assert "val_ema_loss" in writers.read_metrics(straight)[-1]
  with pytest.raises(ValueError, match=r"config\.optim\.ema_decay=0\.9 there but 0\.0 now"):
    trainer.train(_config(data_dir, **{"train.steps": 8, "optim.ema_decay": 0.0}), straight)
