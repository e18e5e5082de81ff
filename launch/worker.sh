#!/usr/bin/env bash
# Runs on one training machine (a TPU VM worker, a GPU host), inside the upgen checkout it
# belongs to; tpu_vm.sh and gpu_hosts.sh call it over ssh on every machine.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"  # PROG, ROOT, die, run, ...

usage() {
  cat <<'EOF'
usage: launch/worker.sh COMMAND [options] [-- UPGEN_TRAIN_ARGS...]

Runs on one training machine, in the upgen checkout that holds this script.

commands:
  setup   make .venv with the locked requirements, upgen (editable, with gcsfs for gs://
          paths) and jax for the accelerator; optionally mount GCS buckets with gcsfuse
  start   start `upgen train UPGEN_TRAIN_ARGS` in the background (nohup); output is
          appended to logs/train-HOST.log, the process id written to logs/train-HOST.pid
  stop    send SIGTERM to that process (the trainer saves a checkpoint and exits)
  logs    print (and follow) logs/train-HOST.log
  status  say whether the training process is running

options:
  --jax-extra EXTRA   setup: jax extra to install: tpu, cuda12, cuda13 or none (default
                      none: CPU); the version is the jax pinned in requirements-lock.txt
  --python VERSION    setup: Python for .venv, installed by uv if missing (default 3.11)
  --bucket NAME       setup: mount gs://NAME at /gcs/NAME with gcsfuse (repeatable)
  --env KEY=VALUE     start: environment variable for the trainer (repeatable)
  --wait SECONDS      stop: wait up to SECONDS for the process to exit (default 0)
  --lines N           logs: lines of history to print first (default 100)
  --no-follow         logs: print and return instead of following
  --dry-run           print the commands, one per line, and run nothing
  -h, --help          this help
EOF
}

cmd=${1:-}
check_command "$cmd" setup start stop logs status
shift

jax_extra=none python=3.11 wait_s=0 lines=100 follow=1
buckets=() envs=() train_args=()
while (($#)); do
  case $1 in
    --jax-extra) need_value "$1" "$#" "$2"; jax_extra=$2; shift 2 ;;
    --python) need_value "$1" "$#" "$2"; python=$2; shift 2 ;;
    --bucket) need_value "$1" "$#" "$2"; buckets+=("$2"); shift 2 ;;
    --env) need_value "$1" "$#" "$2"; envs+=("$2"); shift 2 ;;
    --wait) need_value "$1" "$#" "$2"; wait_s=$2; shift 2 ;;
    --lines) need_value "$1" "$#" "$2"; lines=$2; shift 2 ;;
    --no-follow) follow=0; shift ;;
    --) shift; train_args=("$@"); break ;;
    *) common_option "$1"; shift ;;
  esac
done

host=$(hostname -s 2>/dev/null || hostname)
log=logs/train-$host.log
pidfile=logs/train-$host.pid

running_pid() {
  local pid
  [[ -f $ROOT/$pidfile ]] || return 1
  pid=$(<"$ROOT/$pidfile")
  [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null && printf '%s' "$pid"
}

do_setup() {
  local spec=() uv b
  case $jax_extra in
    none | cpu) ;;
    tpu | cuda12 | cuda13 | cuda12-local | cuda13-local) spec=("jax[$jax_extra]==$(jax_version "$ROOT")") ;;
    *) die "--jax-extra '$jax_extra': expected tpu, cuda12, cuda13 or none" ;;
  esac
  cd "$ROOT"
  # uv installs the requested Python when the machine's is older (TPU VM images: 3.10).
  if command -v uv >/dev/null; then
    uv=(uv)
  else
    run_sh "python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --user -q uv || python3 -m pip install --user -q --break-system-packages uv"
    uv=(python3 -m uv)
  fi
  run "${uv[@]}" venv --allow-existing --python "$python" .venv
  # The gcs extra (gcsfs, google-cloud-storage) lets --workdir and --config.data.dir be gs://.
  run "${uv[@]}" pip install --python .venv/bin/python -r requirements-lock.txt -e ".[gcs]" "${spec[@]}"
  run .venv/bin/python -c 'import jax, upgen; print("upgen installed; jax", jax.__version__)'
  for b in "${buckets[@]}"; do
    [[ $b =~ ^[a-z0-9][a-z0-9._-]*$ ]] || die "--bucket '$b': give the bucket name, not a gs:// URL"
    # The apt repository of gcsfuse, as its install guide has it.
    run_sh "command -v gcsfuse >/dev/null || { echo \"deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt gcsfuse-\$(lsb_release -c -s) main\" | sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null && curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null && sudo apt-get update -qq && sudo apt-get install -y -qq gcsfuse; }"
    run sudo mkdir -p "/gcs/$b"
    run_sh "sudo chown \"\$(id -u):\$(id -g)\" $(quote "/gcs/$b")"
    # orbax commits a checkpoint by renaming its temporary directory: gcsfuse renames
    # directories only below --rename-dir-limit descendants (atomically on HNS buckets).
    run_sh "mountpoint -q $(quote "/gcs/$b") || gcsfuse --implicit-dirs --rename-dir-limit=1000000 $(quote "$b") $(quote "/gcs/$b")"
  done
}

do_start() {
  local pid e assigns=()
  check_train_args "${train_args[@]}"
  for e in "${envs[@]}"; do
    [[ $e =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "--env '$e': expected KEY=VALUE"
    assigns+=("$e")
  done
  if pid=$(running_pid); then
    die "upgen train is already running on $host (pid $pid); launch/worker.sh stop first"
  fi
  [[ -x $ROOT/.venv/bin/upgen ]] || ((DRY_RUN)) ||
    die "$ROOT/.venv/bin/upgen not found: run launch/worker.sh setup first"
  cd "$ROOT"
  run mkdir -p logs
  run_sh "echo $(quote "==== $(date -u +%Y-%m-%dT%H:%M:%SZ) $host: upgen train $(quote_all "${train_args[@]}")") >> $(quote "$log")"
  # nohup: the trainer outlives the ssh session; $! is its pid (env and nohup exec).
  run_sh "nohup env $(quote_all "${assigns[@]}" .venv/bin/upgen train "${train_args[@]}") >> $(quote "$log") 2>&1 < /dev/null & echo \$! > $(quote "$pidfile")"
  ((DRY_RUN)) || echo "$PROG: upgen train started on $host (pid $(<"$pidfile")), log $ROOT/$log" >&2
}

do_stop() {
  local pid waited=0
  if ! pid=$(running_pid); then
    echo "$PROG: upgen train is not running on $host" >&2
    return 0
  fi
  run kill -TERM "$pid"
  ((DRY_RUN)) && return 0
  echo "$PROG: sent SIGTERM to upgen train on $host (pid $pid): it checkpoints and exits" >&2
  while ((waited < wait_s)) && kill -0 "$pid" 2>/dev/null; do
    sleep 1
    waited=$((waited + 1))
  done
  if kill -0 "$pid" 2>/dev/null; then
    ((wait_s == 0)) || die "upgen train on $host (pid $pid) still running after ${wait_s}s"
  else
    echo "$PROG: upgen train on $host has exited" >&2
  fi
}

do_logs() {
  cd "$ROOT"
  if ((follow)); then
    run tail -n "$lines" -F "$log"
  else
    run tail -n "$lines" "$log"
  fi
}

do_status() {
  local pid
  if pid=$(running_pid); then
    echo "$host: running (pid $pid)"
  else
    echo "$host: not running"
  fi
}

"do_$cmd"
