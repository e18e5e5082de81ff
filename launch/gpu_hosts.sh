#!/usr/bin/env bash
# `upgen train` as one JAX process per GPU host, over ssh: process i of N runs on the i-th
# host with --coordinator_address=<first host>:PORT --num_processes=N --process_id=i.
# See docs/scaling.md.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"  # PROG, ROOT, die, run, ...

usage() {
  cat <<'EOF'
usage: launch/gpu_hosts.sh COMMAND (--hosts H1,H2,... | --hostfile FILE) [options]
                           [-- UPGEN_TRAIN_ARGS...]

commands:
  setup    copy this checkout to every host and install it there (launch/worker.sh
           setup: .venv with requirements-lock.txt, upgen with gcsfs, jax[cuda12])
  train    start `upgen train` on every host (process i on host i, all pointed at the
           first host as coordinator), then follow the first host's log (--detach:
           return at once)
  logs     follow the training log of --worker (index, default 0; "all": every host,
           lines prefixed with the host)
  stop     SIGTERM the trainer on every host: it saves a checkpoint and exits
  exec     run the shell command given after -- on every host
  all      setup, then train

options:
  --hosts H1,H2,...     ssh destinations ([user@]host), in process order
  --hostfile FILE       one ssh destination per line (blank lines and # comments skipped)
  --coordinator ADDR    address the processes reach process 0 at (default: the first
                        host without its user@)
  --port PORT           coordinator port on the first host (default 8476)
  --ssh-option OPT      ssh/scp -o option (repeatable), e.g. StrictHostKeyChecking=accept-new
  --shared-fs           hosts share the remote directory (NFS home): copy and install on
                        the first host only
  --source DIR          checkout to copy (default: the one holding this script)
  --remote-dir DIR      where it goes on the hosts, relative to home (default upgen)
  --python VERSION      Python of the hosts' .venv (default 3.11)
  --jax-extra EXTRA     jax extra to install (default cuda12; cuda13 for CUDA 13 drivers)
  --env KEY=VALUE       train: environment variable for the trainer (repeatable)
  --worker W            logs: host index or "all" (default 0)
  --detach              train: do not follow the log after starting
  --dry-run             print the commands, one per line, and run nothing
  -h, --help            this help

UPGEN_TRAIN_ARGS (after --) go to `upgen train` unchanged on every host; the workdir
must be a gs:// URL or on a filesystem every host sees under the same path (NFS, Lustre,
a gcsfuse mount): process 0 writes config and metrics, every process writes its
checkpoint shards.

example:
  launch/gpu_hosts.sh all --hosts gpu0,gpu1,gpu2,gpu3 -- \
      --config configs/upgen.py:large --workdir /shared/runs/large \
      --config.data.dir=/shared/data --config.mesh.data=4 --config.mesh.fsdp=8
EOF
}

cmd=${1:-}
check_command "$cmd" setup train logs stop exec all
shift

hosts_csv="" hostfile="" coordinator="" port=8476 shared_fs=0 source_dir=$ROOT
remote_dir=upgen python=3.11 jax_extra=cuda12 worker=0 detach=0
ssh_opts=() envs=() rest=()
while (($#)); do
  case $1 in
    --hosts) need_value "$1" "$#" "$2"; hosts_csv=$2; shift 2 ;;
    --hostfile) need_value "$1" "$#" "$2"; hostfile=$2; shift 2 ;;
    --coordinator) need_value "$1" "$#" "$2"; coordinator=$2; shift 2 ;;
    --port) need_value "$1" "$#" "$2"; port=$2; shift 2 ;;
    --ssh-option) need_value "$1" "$#" "$2"; ssh_opts+=(-o "$2"); shift 2 ;;
    --shared-fs) shared_fs=1; shift ;;
    --source) need_value "$1" "$#" "$2"; source_dir=$2; shift 2 ;;
    --remote-dir) need_value "$1" "$#" "$2"; remote_dir=$2; shift 2 ;;
    --python) need_value "$1" "$#" "$2"; python=$2; shift 2 ;;
    --jax-extra) need_value "$1" "$#" "$2"; jax_extra=$2; shift 2 ;;
    --env) need_value "$1" "$#" "$2"; envs+=("$2"); shift 2 ;;
    --worker) need_value "$1" "$#" "$2"; worker=$2; shift 2 ;;
    --detach) detach=1; shift ;;
    --) shift; rest=("$@"); break ;;
    *) common_option "$1"; shift ;;
  esac
done

hosts=()
if [[ -n $hosts_csv && -n $hostfile ]]; then
  die "give --hosts or --hostfile, not both"
elif [[ -n $hosts_csv ]]; then
  IFS=, read -r -a hosts <<<"$hosts_csv"
elif [[ -n $hostfile ]]; then
  [[ -r $hostfile ]] || die "--hostfile $hostfile: cannot read it"
  while IFS= read -r line || [[ -n $line ]]; do
    line=${line%%#*}
    line=${line//[[:space:]]/}
    [[ -z $line ]] || hosts+=("$line")
  done <"$hostfile"
else
  die "--hosts or --hostfile is required (the GPU hosts, process 0 first)"
fi
((${#hosts[@]})) || die "no hosts given"
for h in "${hosts[@]}"; do
  [[ $h =~ ^[A-Za-z0-9_.@:-]+$ ]] || die "host '$h': expected [user@]hostname"
done
[[ $port =~ ^[0-9]+$ ]] || die "--port '$port': expected a number"
[[ $remote_dir =~ ^[A-Za-z0-9_./-]+$ ]] || die "--remote-dir '$remote_dir': use a plain relative or absolute path"
num=${#hosts[@]}
first=${hosts[0]}
[[ -n $coordinator ]] || coordinator=${first#*@}

host_indices() {  # The hosts --worker picks.
  if [[ $worker == all ]]; then
    seq 0 $((num - 1))
  elif [[ $worker =~ ^[0-9]+$ ]] && ((worker < num)); then
    echo "$worker"
  else
    die "--worker '$worker': expected all or an index below $num"
  fi
}

do_setup() {
  local tarball=${TMPDIR:-/tmp}/upgen-src-gpu.tar.gz targets=("${hosts[@]}") h
  ((shared_fs)) && targets=("$first")
  pack_source "$source_dir" "$tarball"
  for h in "${targets[@]}"; do
    run_bg scp -q "${ssh_opts[@]}" "$tarball" "$h:upgen-src.tar.gz"
  done
  wait_bg
  for h in "${targets[@]}"; do
    run_bg ssh "${ssh_opts[@]}" "$h" "mkdir -p $remote_dir && tar -xzf upgen-src.tar.gz -C $remote_dir && $remote_dir/launch/worker.sh setup $(quote_all --jax-extra "$jax_extra" --python "$python")"
  done
  wait_bg
}

do_train() {
  check_train_args "${rest[@]}"
  local i e env_args=()
  for e in "${envs[@]}"; do
    env_args+=(--env "$e")
  done
  for ((i = 0; i < num; i++)); do
    run ssh "${ssh_opts[@]}" "${hosts[i]}" "$remote_dir/launch/worker.sh start $(quote_all "${env_args[@]}" -- \
      --coordinator_address="$coordinator:$port" --num_processes="$num" --process_id="$i" "${rest[@]}")"
  done
  ((detach)) || do_logs
}

do_logs() {
  local i indices
  indices=$(host_indices)
  if [[ $worker == all ]]; then
    for i in $indices; do
      run_bg bash -c "ssh $(quote_all "${ssh_opts[@]}" "${hosts[i]}" "$remote_dir/launch/worker.sh logs") | awk -v p=$(quote "[${hosts[i]}] ") '{ print p \$0; fflush() }'"
    done
    wait_bg
  else
    run ssh "${ssh_opts[@]}" "${hosts[indices]}" "$remote_dir/launch/worker.sh logs"
  fi
}

do_stop() {
  local h
  for h in "${hosts[@]}"; do
    run_bg ssh "${ssh_opts[@]}" "$h" "$remote_dir/launch/worker.sh stop"
  done
  wait_bg
}

do_exec() {
  ((${#rest[@]})) || die "exec: give the command after --"
  local h
  for h in "${hosts[@]}"; do
    run_bg ssh "${ssh_opts[@]}" "$h" "${rest[*]}"
  done
  wait_bg
}

do_all() {
  check_train_args "${rest[@]}"  # Before installing anything.
  do_setup
  do_train
}

"do_$cmd"
