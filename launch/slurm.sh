#!/usr/bin/env bash
# Submits launch/slurm.sbatch with its #SBATCH lines filled in from the options.
# See docs/scaling.md.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"  # PROG, ROOT, die, run, ...
TEMPLATE=$ROOT/launch/slurm.sbatch

usage() {
  cat <<'EOF'
usage: launch/slurm.sh --nodes N [options] -- UPGEN_TRAIN_ARGS...

Renders launch/slurm.sbatch (one task per node, every GPU of the node in it) with the
#SBATCH values below, writes it to --script, and submits it with sbatch.

options:
  --nodes N             nodes, one JAX process each (required)
  --gpus-per-node G     GPUs per node (default 8)
  --time T              time limit, e.g. 24:00:00 (default 24:00:00); the job
                        checkpoints 3 minutes before it and requeues itself
  --partition P         partition
  --account A           account
  --cpus-per-task C     CPUs for each task (the input pipeline's threads)
  --job-name NAME       job name (default upgen)
  --output PATTERN      log file (default %x-%j.out, in the submit directory)
  --sbatch-arg ARG      extra sbatch option (repeatable), e.g. --sbatch-arg=--qos=high
  --upgen-dir DIR       upgen checkout with its .venv on the shared filesystem
                        (default: the one holding this script)
  --script FILE         where the rendered script goes (default
                        ${TMPDIR:-/tmp}/upgen-JOBNAME.sbatch)
  --dry-run             print the sbatch command, then the rendered script; run nothing
  -h, --help            this help

example:
  launch/slurm.sh --nodes 4 --gpus-per-node 8 --partition gpu -- \
      --config configs/upgen.py:large --workdir /shared/runs/large \
      --config.data.dir=/shared/data --config.mesh.data=4 --config.mesh.fsdp=8
EOF
}

nodes="" gpus=8 time_limit=24:00:00 partition="" account="" cpus="" job_name=upgen
output="%x-%j.out" upgen_dir=$ROOT script=""
sbatch_args=() rest=()
while (($#)); do
  case $1 in
    --nodes) need_value "$1" "$#" "$2"; nodes=$2; shift 2 ;;
    --gpus-per-node) need_value "$1" "$#" "$2"; gpus=$2; shift 2 ;;
    --time) need_value "$1" "$#" "$2"; time_limit=$2; shift 2 ;;
    --partition) need_value "$1" "$#" "$2"; partition=$2; shift 2 ;;
    --account) need_value "$1" "$#" "$2"; account=$2; shift 2 ;;
    --cpus-per-task) need_value "$1" "$#" "$2"; cpus=$2; shift 2 ;;
    --job-name) need_value "$1" "$#" "$2"; job_name=$2; shift 2 ;;
    --output) need_value "$1" "$#" "$2"; output=$2; shift 2 ;;
    --sbatch-arg) need_value "$1" "$#"; sbatch_args+=("$2"); shift 2 ;;
    --sbatch-arg=*) sbatch_args+=("${1#--sbatch-arg=}"); shift ;;
    --upgen-dir) need_value "$1" "$#" "$2"; upgen_dir=$2; shift 2 ;;
    --script) need_value "$1" "$#" "$2"; script=$2; shift 2 ;;
    --) shift; rest=("$@"); break ;;
    *) common_option "$1"; shift ;;
  esac
done

[[ -n $nodes ]] || die "--nodes is required (the number of nodes, one JAX process each)"
[[ $nodes =~ ^[1-9][0-9]*$ ]] || die "--nodes '$nodes': expected a positive number"
[[ $gpus =~ ^[1-9][0-9]*$ ]] || die "--gpus-per-node '$gpus': expected a positive number"
[[ -z $cpus || $cpus =~ ^[1-9][0-9]*$ ]] || die "--cpus-per-task '$cpus': expected a positive number"
[[ $job_name =~ ^[A-Za-z0-9_.-]+$ ]] || die "--job-name '$job_name': use letters, digits, _ . -"
[[ $upgen_dir != *,* ]] || die "--upgen-dir '$upgen_dir': a comma cannot pass through sbatch --export"
check_train_args "${rest[@]}"
[[ -n $script ]] || script=${TMPDIR:-/tmp}/upgen-$job_name.sbatch

# render: the template with the #SBATCH values set (a commented-out ##SBATCH line is
# enabled when its option is given).
render() {
  local -a keys=(job-name nodes ntasks-per-node gpus-per-node time output partition account cpus-per-task)
  local -a vals=("$job_name" "$nodes" 1 "$gpus" "$time_limit" "$output" "$partition" "$account" "$cpus")
  local line i key done_keys=" "
  while IFS= read -r line || [[ -n $line ]]; do
    for i in "${!keys[@]}"; do
      key=${keys[i]}
      if [[ $line == "#SBATCH --$key="* || $line == "##SBATCH --$key="* ]]; then
        if [[ -n ${vals[i]} ]]; then
          line="#SBATCH --$key=${vals[i]}"
        fi
        done_keys+="$key "
        break
      fi
    done
    printf '%s\n' "$line"
  done <"$TEMPLATE"
  for i in "${!keys[@]}"; do
    [[ $done_keys == *" ${keys[i]} "* || -z ${vals[i]} ]] ||
      die "$TEMPLATE has no #SBATCH --${keys[i]}= line to set"
  done
}

rendered=$(render)
submit=(sbatch --parsable "--export=ALL,UPGEN_DIR=$upgen_dir" "${sbatch_args[@]}" "$script" "${rest[@]}")
if ((DRY_RUN)); then
  run "${submit[@]}"
  printf '# %s:\n%s\n' "$script" "$rendered"
  exit 0
fi
printf '%s\n' "$rendered" >"$script"
echo "$PROG: wrote $script" >&2
job=$(run "${submit[@]}")
echo "$PROG: submitted job $job; log: $output (%x = $job_name, %j = ${job%%;*})" >&2
echo "$job"
