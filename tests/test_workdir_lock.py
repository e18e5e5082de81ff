"""One run per work directory (runtime/workdir_lock.py): a second `upgen train` on a running
workdir is refused in one line and touches nothing; a lock left by a killed process is taken
over; one from another host is not."""
import json
import os
import socket
import subprocess
import sys
import time

import pytest

from tests import token_data
from upgen import cli
from upgen import errors
from upgen.runtime import workdir_lock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_lock(workdir, **holder):
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, workdir_lock.LOCK_FILE), "w") as f:
    json.dump({"host": socket.gethostname(), "pid": os.getpid(), "started": "then", **holder},
              f)


def test_a_live_holder_is_refused_and_a_dead_one_taken_over(tmp_path, caplog):
  w = str(tmp_path / "run")
  lock = workdir_lock.WorkdirLock(w)
  with lock:  # Fresh: taken, with this process as the holder; released on exit.
    with open(lock.path) as f:
      assert json.load(f)["pid"] == os.getpid()
    with pytest.raises(workdir_lock.WorkdirInUse, match=f"in use by another run \\(pid "
                       f"{os.getpid()} on host {socket.gethostname()}"):
      workdir_lock.WorkdirLock(w).acquire()
  assert not os.path.exists(lock.path)
  # A process on this host that is gone (killed before it could release the lock).
  done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                        capture_output=True, text=True, check=True)
  write_lock(w, pid=int(done.stdout))
  with caplog.at_level("WARNING"), workdir_lock.WorkdirLock(w):
    assert "no longer running" in caplog.text
  # Another host's lock cannot be checked from here: refused, saying how to clear it.
  write_lock(w, host="elsewhere", pid=1)
  with pytest.raises(workdir_lock.WorkdirInUse, match="on host elsewhere.*delete the lock "
                     "file if that run is dead"):
    workdir_lock.WorkdirLock(w).acquire()
  (tmp_path / "file").write_text("")
  with pytest.raises(errors.ConfigError, match="a file, not a directory"):
    workdir_lock.WorkdirLock(str(tmp_path / "file")).acquire()


def test_a_second_train_on_a_running_workdir_is_refused_in_one_line(tmp_path, capsys):
  data = token_data.write(str(tmp_path / "records"))
  w = str(tmp_path / "run")
  overrides = [f"--config.{k}={v}" for k, v in token_data.tiny_overrides(data).items()]
  args = ["train", "--config", "configs/upgen.py:tiny", "--workdir", w, *overrides]
  first = subprocess.Popen([sys.executable, "-m", "upgen.cli", *args,
                            "--config.train.steps=100000", "--config.train.checkpoint_every=5"],
                           cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  try:
    deadline = time.time() + 240
    while not os.path.isdir(os.path.join(w, "checkpoints", "5")):
      assert first.poll() is None, first.stderr.read().decode()[-3000:]
      assert time.time() < deadline, "the first run wrote no checkpoint"
      time.sleep(0.5)
    assert cli.main(args + ["--config.train.steps=3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"upgen train: error: {w} is in use by another "
                                               f"run (pid {first.pid} on host")
    assert first.poll() is None  # The first run goes on.
  finally:
    first.kill()
    first.wait()
  # Killed without releasing it: the next run on the workdir takes the lock over and resumes.
  assert cli.main(args + ["--config.train.steps=7"]) == 0
  assert not os.path.exists(os.path.join(w, workdir_lock.LOCK_FILE))


def test_sigterm_during_start_up_says_so_and_releases_the_lock(tmp_path):
  data = token_data.write(str(tmp_path / "records"))
  w = str(tmp_path / "run")
  overrides = [f"--config.{k}={v}" for k, v in token_data.tiny_overrides(data).items()]
  run = subprocess.Popen([sys.executable, "-m", "upgen.cli", "train", "--config",
                          "configs/upgen.py:tiny", "--workdir", w, *overrides,
                          "--config.train.steps=100000"],
                         cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 120
  while not os.path.exists(os.path.join(w, workdir_lock.LOCK_FILE)):  # Starting up.
    assert run.poll() is None, run.stderr.read()[-3000:]
    assert time.time() < deadline, "the run never took its lock"
    time.sleep(0.05)
  run.terminate()
  _, err = run.communicate(timeout=120)
  assert run.returncode == 143  # 128 + SIGTERM, as a killed process, but with a message.
  assert err.strip().splitlines()[-1] == (
      f"upgen train: stopped by SIGTERM outside the training loop (starting up, or after its "
      f"last checkpoint); the checkpoints in {w} are as they were: run the same command to "
      "resume")
  assert not os.path.exists(os.path.join(w, workdir_lock.LOCK_FILE))
  assert not os.path.isdir(os.path.join(w, "checkpoints", "1"))
