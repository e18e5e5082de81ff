"""Errors a user can fix, through the CLI as a user runs it: one line `upgen <command>:
error: ...`, exit status 2, the traceback only with --debug; a checkpoint the disk cannot
hold is refused with the path and the free space, the earlier checkpoints intact, and the
next run resumes from them."""
import os
import shutil
import subprocess
import sys

import pytest

from tests import token_data
from upgen import cli
from upgen import errors
from upgen.runtime import checkpoint
from upgen.runtime import writers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _upgen(*args, env=None):
  return subprocess.run([sys.executable, "-m", "upgen.cli", *map(str, args)], cwd=ROOT,
                        capture_output=True, text=True, env=env)


def _train_flags(data_dir, workdir, *extra):
  flags = [f"--config.{k}={v}" for k, v in token_data.tiny_overrides(data_dir).items()]
  return ["train", "--config", "configs/upgen.py:tiny", "--workdir", str(workdir), *flags,
          *extra]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return token_data.write(str(tmp_path_factory.mktemp("records")))


def test_a_missing_run_or_missing_records_is_one_line(tmp_path):
  missing = tmp_path / "no_run"
  out = _upgen("sample", "--workdir", missing, "--prompts", __file__, "--out", tmp_path / "o")
  assert out.returncode == 2
  assert out.stderr.splitlines() == [
      f"upgen sample: error: {missing}/config.json: no config.json - is '{missing}' a upgen "
      "run directory?"]
  out = _upgen("train", "--config", "configs/upgen.py:tiny", "--workdir", tmp_path / "run",
               f"--config.data.dir={tmp_path / 'no_records'}")
  assert out.returncode == 2 and "Traceback" not in out.stderr
  assert out.stderr.splitlines()[-1] == (
      f"upgen train: error: {tmp_path / 'no_records'}/metadata.json: not found (run `upgen "
      "tokenize` to create records)")
  # --debug (or UPGEN_DEBUG=1) shows where it came from.
  debug = _upgen("sample", "--workdir", missing, "--prompts", __file__, "--out", tmp_path / "o",
                 "--debug")
  assert debug.returncode != 0 and "Traceback (most recent call last)" in debug.stderr
  assert debug.stderr.splitlines()[-1].startswith("upgen.errors.NotFound: ")


def test_user_errors_keep_the_builtin_types():
  assert issubclass(errors.ConfigError, ValueError) and issubclass(errors.NotFound,
                                                                   FileNotFoundError)
  assert issubclass(checkpoint.CheckpointReadError, errors.StorageError)
  assert issubclass(errors.StorageError, OSError)


def test_a_full_disk_refuses_the_checkpoint_and_the_next_run_resumes(data_dir, tmp_path,
                                                                     monkeypatch, capsys):
  """The disk (as shutil.disk_usage reports it) fills up after the second checkpoint."""
  workdir = tmp_path / "run"
  real_usage = shutil.disk_usage

  def usage(path):
    total, used, free = real_usage(path)
    full = (workdir / "checkpoints").exists() and len(os.listdir(workdir / "checkpoints")) >= 2
    return type(real_usage(path))(total, used, 1000 if full else free)

  monkeypatch.setattr(checkpoint.shutil, "disk_usage", usage)
  argv = _train_flags(data_dir, workdir, "--config.train.steps=8",
                      "--config.train.checkpoint_every=2", "--config.train.log_every=1")
  assert cli.main(argv) == 2
  err = capsys.readouterr().err.splitlines()
  assert err[-1].startswith(f"upgen train: error: {workdir}/checkpoints/6: checkpoint not "
                            "written: it needs about ")
  assert "MB free (no space left on device). Checkpoints on disk, intact: 2, 4." in err[-1]
  assert not any("Traceback" in line for line in err)
  assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4"]
  monkeypatch.setattr(checkpoint.shutil, "disk_usage", real_usage)  # Space freed.
  assert cli.main(argv) == 0
  steps = [r["step"] for r in writers.read_metrics(str(workdir)) if "loss" in r]
  assert steps == list(range(1, 9))  # Steps 5-6 re-run from checkpoint 4, once each.


@pytest.mark.skipif(sys.platform != "linux", reason="tmpfs")
def test_a_real_full_disk_is_one_line(data_dir, tmp_path):
  """The same on a real 6 MB filesystem (where this machine lets root mount one)."""
  small = tmp_path / "small"
  small.mkdir()
  if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(small)],
                    capture_output=True).returncode:
    pytest.skip("cannot mount a tmpfs here")
  try:
    out = _upgen(*_train_flags(data_dir, small / "run", "--config.train.steps=40",
                               "--config.train.checkpoint_every=2",
                               "--config.train.keep_checkpoints=100"))
    assert out.returncode == 2, out.stderr[-2000:]
    lines = out.stderr.splitlines()
    assert lines[-1].startswith(f"upgen train: error: {small / 'run'}/checkpoints/")
    assert "no space left on device" in lines[-1] and "Traceback" not in out.stderr
    assert len(lines) <= 3, lines  # The run's start-up log lines, then the error.
    left = sorted(int(s) for s in os.listdir(small / "run" / "checkpoints"))
    assert left and left == list(range(2, 2 * len(left) + 1, 2))
  finally:
    subprocess.run(["umount", str(small)])


@pytest.mark.parametrize("key, value", [("train.steps", 0), ("train.steps", -5),
                                        ("data.batch_size", 0)])
def test_a_run_of_no_steps_or_no_rows_is_refused_before_it_writes(data_dir, tmp_path, key,
                                                                    value, capsys):
  workdir = tmp_path / "run"
  assert cli.main(_train_flags(data_dir, workdir, f"--config.{key}={value}")) == 2
  assert capsys.readouterr().err.splitlines() == [
      f"upgen train: error: config.{key}={value}: must be >= 1"]
  assert not os.path.exists(workdir / "checkpoints") and not os.path.exists(
      workdir / "config.json")  # It never "completed" into a run with no checkpoint.
