# Helpers shared by the launch scripts (sourced, not run).
#
# Every action goes through `run` / `run_sh` / `run_bg`: with DRY_RUN=1 they print the
# command, one line each, quoted so that bash (and Python's shlex.split) reads it back as
# the same words, and run nothing.
# shellcheck shell=bash

if ((BASH_VERSINFO[0] < 4 || (BASH_VERSINFO[0] == 4 && BASH_VERSINFO[1] < 4))); then
  echo "${0##*/}: needs bash >= 4.4 (this is $BASH_VERSION; on macOS: brew install bash)" >&2
  exit 2
fi

DRY_RUN=${DRY_RUN:-0}
# The script that sources this (its messages start with PROG) and the checkout holding it.
PROG=${BASH_SOURCE[1]:-$0}
PROG=${PROG##*/}
# shellcheck disable=SC2034  # Used by the scripts that source this.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BG_PIDS=()

die() {
  printf '%s: error: %s\n' "$PROG" "$*" >&2
  exit 2
}

# check_command CMD NAME...: CMD (the script's first argument) is one of the commands
# NAME; none prints the usage (the script's `usage`) to stderr, -h or --help to stdout.
check_command() {
  local cmd=$1 name list
  shift
  [[ -n $cmd ]] || { usage >&2; exit 2; }
  [[ $cmd != -h && $cmd != --help ]] || { usage; exit 0; }
  for name in "$@"; do
    [[ $cmd != "$name" ]] || return 0
  done
  printf -v list '%s, ' "$@"
  die "unknown command '$cmd' (${list%, })"
}

# common_option ARG: the options every script takes after its own (--dry-run, -h/--help);
# anything else is an unknown option. The caller shifts ARG.
common_option() {
  case $1 in
    --dry-run) DRY_RUN=1 ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
}

# quote WORD: WORD as one shell word (bare when it is safe, else single-quoted).
quote() {
  local s=$1 q="'\\''"
  if [[ $s =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
    printf '%s' "$s"
  else
    printf "'%s'" "${s//\'/$q}"
  fi
}

# quote_all WORD...: the words quoted and joined by spaces.
quote_all() {
  local out="" w
  for w in "$@"; do
    out+="${out:+ }$(quote "$w")"
  done
  printf '%s' "$out"
}

# run CMD [ARG...]: print the command (dry run) or echo it to stderr and run it.
run() {
  if ((DRY_RUN)); then
    printf '%s\n' "$(quote_all "$@")"
  else
    printf '+ %s\n' "$(quote_all "$@")" >&2
    "$@"
  fi
}

# run_sh LINE: a shell command line with pipes or redirections, printed or run by bash.
run_sh() {
  if ((DRY_RUN)); then
    printf '%s\n' "$1"
  else
    printf '+ %s\n' "$1" >&2
    bash -c "$1"
  fi
}

# run_bg CMD [ARG...]: like run, but in the background; wait_bg waits for all of them.
run_bg() {
  if ((DRY_RUN)); then
    printf '%s\n' "$(quote_all "$@")"
  else
    printf '+ %s &\n' "$(quote_all "$@")" >&2
    "$@" &
    BG_PIDS+=("$!")
  fi
}

wait_bg() {
  local pid failed=0
  for pid in "${BG_PIDS[@]}"; do
    wait "$pid" || failed=$((failed + 1))
  done
  BG_PIDS=()
  ((failed == 0)) || die "$failed of the background commands above failed"
}

# need_value FLAG ARGC [VALUE]: FLAG takes a value; ARGC is the number of arguments left
# ($#). Given VALUE, an option (--x) in its place is an error too.
need_value() {
  (($2 >= 2)) || die "$1 needs a value"
  [[ ${3-} != --* ]] || die "$1 needs a value (got the option '$3')"
}

# check_train_args ARG...: the arguments of `upgen train` name --config and --workdir.
# (gs:// paths are fine: upgen reads and writes them through gcsfs, which setup installs.)
check_train_args() {
  local a has_config=0 has_workdir=0
  for a in "$@"; do
    case $a in
      --config | --config=*) has_config=1 ;;
      --workdir | --workdir=*) has_workdir=1 ;;
    esac
  done
  ((has_config)) || die "--config is required in the upgen train arguments after --" \
    "(e.g. -- --config configs/upgen.py:large --workdir DIR --config.data.dir=DATA)"
  ((has_workdir)) || die "--workdir is required in the upgen train arguments after --"
}

# pack_source SRC OUT: a tarball of SRC's tracked and untracked-but-not-ignored files.
pack_source() {
  run_sh "git -C $(quote "$1") ls-files -z --cached --others --exclude-standard | tar -C $(quote "$1") --null -T - -czf $(quote "$2")"
}

# jax_version SRC: the jax version pinned in SRC/requirements-lock.txt.
jax_version() {
  local v
  v=$(sed -n 's/^jax==\([^ ;]*\).*/\1/p' "$1/requirements-lock.txt" 2>/dev/null || true)
  [[ -n $v ]] || die "$1/requirements-lock.txt: no jax==VERSION line"
  printf '%s' "$v"
}
