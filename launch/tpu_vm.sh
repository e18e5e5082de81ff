#!/usr/bin/env bash
# Cloud TPU VMs and pod slices: create, install upgen on every worker, train, logs, stop,
# delete. See docs/scaling.md.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"  # PROG, ROOT, die, run, ...

usage() {
  cat <<'EOF'
usage: launch/tpu_vm.sh COMMAND --name NAME --zone ZONE [options] [-- UPGEN_TRAIN_ARGS...]

commands:
  create   create the TPU VM / pod slice (gcloud compute tpus tpu-vm create, or
           gcloud compute tpus queued-resources create with --queued-resource)
  wait     wait until the queued resource is ACTIVE
  setup    copy this checkout to every worker and install it there (launch/worker.sh
           setup: .venv with requirements-lock.txt, upgen with gcsfs, jax[tpu]);
           --bucket also mounts GCS buckets with gcsfuse
  train    start `upgen train UPGEN_TRAIN_ARGS` on every worker (--worker=all), then
           follow worker 0's log (--detach: return at once)
  logs     follow the training log of --worker (default 0; "all" interleaves them)
  stop     SIGTERM the trainer on every worker: it saves a checkpoint and exits
  delete   delete the TPU VM (with --queued-resource: the queued resource and its node)
  exec     run the shell command given after -- on every worker (e.g. copy data)
  all      create, wait (queued), setup, train

options:
  --name NAME              TPU VM name, also the queued resource id (required)
  --zone ZONE              zone, e.g. us-central2-b (required)
  --type TYPE              accelerator type, e.g. v4-32, v5p-128 (required by create);
                           --accelerator-type is the same flag
  --runtime-version V      TPU software version (default from --type: v4 and older
                           tpu-ubuntu2204-base, v5p v2-alpha-tpuv5, v5e
                           v2-alpha-tpuv5-lite, v6e v2-alpha-tpuv6e)
  --project PROJECT        GCP project (default: gcloud's configured project)
  --spot                   Spot TPU (preemptible; resume is automatic on re-train)
  --queued-resource        create through a queued resource (waits for capacity)
  --create-flag FLAG       extra flag for the create command (repeatable), e.g.
                           --create-flag=--reserved --create-flag=--network=NET
  --source DIR             checkout to copy (default: the one holding this script)
  --remote-dir DIR         where it goes on the workers, relative to home (default upgen)
  --python VERSION         Python of the workers' .venv (default 3.11)
  --bucket NAME            setup: mount gs://NAME at /gcs/NAME on every worker (repeatable)
  --env KEY=VALUE          train: environment variable for the trainer (repeatable)
  --worker W               logs: worker index or "all" (default 0)
  --detach                 train: do not follow the log after starting
  --yes                    delete: no confirmation prompt
  --dry-run                print the commands, one per line, and run nothing
  -h, --help               this help

UPGEN_TRAIN_ARGS (after --) go to `upgen train` unchanged on every worker. Paths must be
visible to every worker under the same name: gs:// URLs (upgen reads and writes them
through gcsfs) or a gcsfuse mount from --bucket.

example:
  launch/tpu_vm.sh all --name upgen-v4 --zone us-central2-b --type v4-32 --spot \
      -- --config configs/upgen.py:large \
      --workdir gs://my-bucket/runs/large --config.data.dir=gs://my-bucket/data \
      --config.mesh.data=1 --config.mesh.fsdp=16
EOF
}

cmd=${1:-}
check_command "$cmd" create wait setup train logs stop delete exec all
shift

name="" zone="" type="" runtime="" project="" spot=0 queued=0 source_dir=$ROOT
remote_dir=upgen python=3.11 worker=0 detach=0 yes=0
create_flags=() buckets=() envs=() rest=()
while (($#)); do
  case $1 in
    --name) need_value "$1" "$#" "$2"; name=$2; shift 2 ;;
    --zone) need_value "$1" "$#" "$2"; zone=$2; shift 2 ;;
    --type | --accelerator-type) need_value "$1" "$#" "$2"; type=$2; shift 2 ;;
    --runtime-version) need_value "$1" "$#" "$2"; runtime=$2; shift 2 ;;
    --project) need_value "$1" "$#" "$2"; project=$2; shift 2 ;;
    --spot) spot=1; shift ;;
    --queued-resource) queued=1; shift ;;
    --create-flag) need_value "$1" "$#"; create_flags+=("$2"); shift 2 ;;
    --create-flag=*) create_flags+=("${1#--create-flag=}"); shift ;;
    --source) need_value "$1" "$#" "$2"; source_dir=$2; shift 2 ;;
    --remote-dir) need_value "$1" "$#" "$2"; remote_dir=$2; shift 2 ;;
    --python) need_value "$1" "$#" "$2"; python=$2; shift 2 ;;
    --bucket) need_value "$1" "$#" "$2"; buckets+=("$2"); shift 2 ;;
    --env) need_value "$1" "$#" "$2"; envs+=("$2"); shift 2 ;;
    --worker) need_value "$1" "$#" "$2"; worker=$2; shift 2 ;;
    --detach) detach=1; shift ;;
    --yes) yes=1; shift ;;
    --) shift; rest=("$@"); break ;;
    *) common_option "$1"; shift ;;
  esac
done

[[ -n $name ]] || die "--name is required (the TPU VM name)"
[[ -n $zone ]] || die "--zone is required (e.g. us-central2-b)"
[[ $remote_dir =~ ^[A-Za-z0-9_./-]+$ ]] || die "--remote-dir '$remote_dir': use a plain relative or absolute path"

location=(--zone="$zone")
[[ -z $project ]] || location+=(--project="$project")

default_runtime() {
  case $1 in
    v2-* | v3-* | v4-*) echo tpu-ubuntu2204-base ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v5litepod-* | v5e-*) echo v2-alpha-tpuv5-lite ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
    *) die "--runtime-version is required for accelerator type '$1'" ;;
  esac
}

# ssh_all WORKER REMOTE_COMMAND: run it on the worker(s) of the slice.
ssh_all() {
  run gcloud compute tpus tpu-vm ssh "$name" "${location[@]}" --worker="$1" --command="$2"
}

do_create() {
  [[ -n $type ]] || die "--type is required by create (e.g. v4-32, v5p-128)"
  [[ -n $runtime ]] || runtime=$(default_runtime "$type")
  local extra=()
  ((spot)) && extra+=(--spot)
  extra+=("${create_flags[@]}")
  if ((queued)); then
    run gcloud compute tpus queued-resources create "$name" "${location[@]}" \
      --node-id="$name" --accelerator-type="$type" --runtime-version="$runtime" "${extra[@]}"
  else
    run gcloud compute tpus tpu-vm create "$name" "${location[@]}" \
      --accelerator-type="$type" --version="$runtime" "${extra[@]}"
  fi
}

do_wait() {
  ((queued)) || return 0
  local describe=(gcloud compute tpus queued-resources describe "$name" "${location[@]}"
    --format='value(state.state)')
  if ((DRY_RUN)); then
    run "${describe[@]}"
    return 0
  fi
  local state
  while true; do
    state=$("${describe[@]}")
    echo "$PROG: queued resource $name: $state" >&2
    case $state in
      ACTIVE) return 0 ;;
      FAILED | SUSPENDED) die "queued resource $name is $state" ;;
    esac
    sleep 30
  done
}

do_setup() {
  local tarball=${TMPDIR:-/tmp}/upgen-src-$name.tar.gz b args=(--jax-extra tpu --python "$python")
  for b in "${buckets[@]}"; do
    args+=(--bucket "$b")
  done
  pack_source "$source_dir" "$tarball"
  run gcloud compute tpus tpu-vm scp "$tarball" "$name:upgen-src.tar.gz" "${location[@]}" --worker=all
  ssh_all all "mkdir -p $remote_dir && tar -xzf upgen-src.tar.gz -C $remote_dir && $remote_dir/launch/worker.sh setup $(quote_all "${args[@]}")"
}

do_train() {
  check_train_args "${rest[@]}"
  local e args=()
  for e in "${envs[@]}"; do
    args+=(--env "$e")
  done
  ssh_all all "$remote_dir/launch/worker.sh start $(quote_all "${args[@]}" -- "${rest[@]}")"
  ((detach)) || do_logs
}

do_logs() {
  ssh_all "$worker" "$remote_dir/launch/worker.sh logs"
}

do_stop() {
  ssh_all all "$remote_dir/launch/worker.sh stop"
}

do_delete() {
  local quiet=()
  ((yes)) && quiet=(--quiet)
  if ((queued)); then
    run gcloud compute tpus queued-resources delete "$name" "${location[@]}" --force "${quiet[@]}"
  else
    run gcloud compute tpus tpu-vm delete "$name" "${location[@]}" "${quiet[@]}"
  fi
}

do_exec() {
  ((${#rest[@]})) || die "exec: give the command after --"
  ssh_all all "${rest[*]}"
}

do_all() {
  check_train_args "${rest[@]}"  # Before creating anything.
  do_create
  do_wait
  do_setup
  do_train
}

"do_$cmd"
