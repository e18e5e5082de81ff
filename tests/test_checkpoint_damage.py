"""A damaged checkpoint costs its step, not the run (#30): `upgen train` resumes from the
newest intact step and readers load it, each with one warning line naming the step, the item
and the error; no intact step is one line; the unfinished writes a killed save left are
removed; a changed model stays a ConfigError and never falls back to an older step."""
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import upgen as upgen_config
from tests import token_data
from upgen import errors
from upgen import rundir
from upgen.runtime import checkpoint
from upgen.runtime import restore
from upgen.runtime import writers
from upgen.train import trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = {"train.steps": 4, "train.checkpoint_every": 1, "train.keep_checkpoints": 3,
       "train.log_every": 1}


def _config(data_dir, **overrides):
  c = upgen_config.get_config("tiny")
  c.update_from_flattened_dict({**token_data.tiny_overrides(data_dir), **RUN, **overrides})
  return c


def _upgen(*args):
  out = subprocess.run([sys.executable, "-m", "upgen.cli", *map(str, args)], cwd=ROOT,
                       capture_output=True, text=True)
  # Less orbax's note that a save waited for the one before (a checkpoint every step on a
  # busy machine): a timing note, not part of what these runs report.
  return out, [line for line in out.stderr.splitlines()
               if "Waiting for previous save to complete" not in line]


def _train_flags(data_dir, workdir, **extra):
  flags = {**token_data.tiny_overrides(data_dir), **RUN, **extra}
  return ["train", "--config", "configs/upgen.py:tiny", "--workdir", workdir,
          *(f"--config.{k}={v}" for k, v in flags.items())]


def _nll(workdir):
  return _upgen("eval", "nll", "--workdir", workdir, "--num", 4, "--batch-size", 4)


def _largest_state_file(workdir, step):
  files = [os.path.join(root, n) for root, _, names in
           os.walk(os.path.join(workdir, rundir.CHECKPOINT_DIR, str(step), "state"))
           for n in names]
  return max(files, key=os.path.getsize)


def _truncate(path):
  os.truncate(path, os.path.getsize(path) // 2)


def _steps(workdir):
  return sorted(os.listdir(os.path.join(workdir, rundir.CHECKPOINT_DIR)))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return token_data.write(str(tmp_path_factory.mktemp("records")))


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("trained") / "run")
  trainer.train(_config(data_dir), workdir)
  assert _steps(workdir) == ["2", "3", "4"]
  return workdir


@pytest.fixture
def run(trained, tmp_path):
  """A copy of the trained run: checkpoints 2, 3 and 4."""
  workdir = str(tmp_path / "run")
  shutil.copytree(trained, workdir)
  return workdir


def test_train_resumes_from_the_newest_intact_step_and_sets_the_damaged_one_aside(data_dir,
                                                                                   run):
  _truncate(_largest_state_file(run, 4))
  out, err = _upgen(*_train_flags(data_dir, run, **{"train.steps": 6}))
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.startswith("upgen train: completed at step 6")
  assert len(err) == 1, out.stderr[-3000:]  # One warning line, no traceback.
  ckpts = f"{run}/checkpoints"
  assert f"{ckpts}/4: damaged checkpoint skipped (state: ValueError: OUT_OF_RANGE: " in err[0]
  assert err[0].endswith(f"resuming from step 3 instead; moved to {ckpts}/4.damaged")
  # Steps 4-6 ran again, once each; keep-N counted only intact steps (4 was written anew).
  assert [r["step"] for r in writers.read_metrics(run) if "loss" in r] == list(range(1, 7))
  assert _steps(run) == ["4", "4.damaged", "5", "6"]


def test_readers_load_the_newest_intact_step_and_change_nothing(run, caplog):
  os.remove(_largest_state_file(run, 4))
  out, err = _nll(run)
  assert out.returncode == 0, out.stderr[-3000:]
  assert json.loads(out.stdout)["num"] == 4
  assert len(err) == 1, out.stderr[-3000:]
  assert f"{run}/checkpoints/4: damaged checkpoint skipped (state: ValueError: " in err[0]
  assert err[0].endswith("; using step 3 instead")
  # What `upgen sample`, the demo, evaluators and exports load: step 3's parameters.
  _, _, params = restore.restore_params(run)
  _, _, step3 = restore.restore_params(run, step=3)
  assert all(jax.tree.leaves(jax.tree.map(np.array_equal, params, step3)))
  assert "checkpoints/4: damaged checkpoint skipped" in caplog.text
  assert _steps(run) == ["2", "3", "4"]  # A reader sets nothing aside.
  with pytest.raises(checkpoint.CheckpointReadError, match=r"checkpoints/4: cannot read the "
                                                           r"checkpoint: state: "):
    restore.restore_params(run, step=4)  # A step asked for by number is that step or none.


def test_no_intact_step_is_one_line_and_nothing_is_moved(data_dir, run):
  _truncate(_largest_state_file(run, 4))
  os.remove(_largest_state_file(run, 3))
  _truncate(os.path.join(run, "checkpoints", "2", "data", "metadata"))
  out, err = _nll(run)
  assert out.returncode == 2 and len(err) == 1, out.stderr[-3000:]
  assert err[0].startswith(f"upgen eval nll: error: {run}/checkpoints: no intact checkpoint: "
                           "step 4: state: ValueError: OUT_OF_RANGE: ")
  assert "; step 3: state: ValueError: " in err[0]
  assert "; step 2: data: JSONDecodeError: " in err[0]
  with pytest.raises(checkpoint.CheckpointReadError, match="no intact checkpoint: step 4"):
    trainer.train(_config(data_dir, **{"train.steps": 6}), run)
  assert _steps(run) == ["2", "3", "4"]  # Not trained again from step 0, nothing moved.


def test_unfinished_writes_a_kill_left_are_removed_with_a_warning(data_dir, run, caplog):
  ckpts = os.path.join(run, "checkpoints")
  left = os.path.join(ckpts, "5.orbax-checkpoint-tmp-1712345678")
  shutil.copytree(os.path.join(ckpts, "4"), left)
  shutil.rmtree(os.path.join(left, "data"))
  restore.restore_params(run)  # A reader holds no lock: it leaves them.
  assert os.path.isdir(left)
  summary = trainer.train(_config(data_dir), run)  # Complete already: resumes at 4.
  assert summary["step"] == 4
  assert not os.path.exists(left) and _steps(run) == ["2", "3", "4"]
  warned = [r.getMessage() for r in caplog.records if "unfinished" in r.getMessage()]
  assert warned == [f"{ckpts}: removing 5.orbax-checkpoint-tmp-1712345678, unfinished "
                    "checkpoint write of a run that was stopped mid-save"]


def test_a_changed_model_is_a_config_error_not_a_fallback(data_dir, run):
  _truncate(_largest_state_file(run, 4))
  out, err = _upgen(*_train_flags(data_dir, run, **{"model.emb_dim": 64}))
  assert out.returncode == 2 and err == [
      f"upgen train: error: {run}/config.json: config.model.emb_dim=32 there but 64 now; "
      "resume with the same model or use a new --workdir"], out.stderr[-3000:]
  # A model its config.json no longer describes (edited, or changed code): the newest step,
  # damaged or not, says so; no older step is tried.
  with open(os.path.join(run, rundir.CONFIG_FILE)) as f:
    saved = json.load(f)
  saved["model"]["emb_dim"] = 64
  with open(os.path.join(run, rundir.CONFIG_FILE), "w") as f:
    json.dump(saved, f)
  with pytest.raises(errors.ConfigError, match=r"checkpoints/4: the checkpoint does not fit "
                                               r"this config's state \(a changed model\? "):
    restore.restore_params(run)
  assert _steps(run) == ["2", "3", "4"]
