"""The `upgen` console script: one entry point, one small module per command; `upgen eval
NAME` runs the evaluator module NAME's main (evaluators/registry.py).

  upgen quickstart --workdir W [--minutes M] [--source DIR]
  upgen data shapes --out DIR [--image-size 32 --num-train N --num-val N --num-test N --seed S]
  upgen data docstrings --out DIR
  upgen data profile DIR [--json]
  upgen eval shapes (--dir SPLIT_DIR | --manifest manifest.jsonl)
  upgen eval nll --workdir W [--split val] [--num 256]
  upgen eval captions --workdir W --data SPLIT_DIR [--num N]
  upgen tokenizer text --captions DIR --vocab-size N --out DIR
  upgen tokenize --source DIR --out DIR --text-tokenizer DIR --image-tokenizer RUN_DIR
  upgen eval text-ppl --workdir W_OR_INIT --text FILE
  upgen eval clip-score --scorer CLIP_RUN --manifest SAMPLES/manifest.jsonl
  upgen eval fid --real DIR --fake DIR_OR_MANIFEST --features scorer:CLIP_RUN|inception:FILE
  upgen eval probe --workdir W --data IMAGES_DIR --label KEY [--baselines]
  upgen eval fit --workdir W --data DIR [--num 128]
  upgen eval recon --workdir VQ_RUN --data IMAGES_DIR [--split val] [--lpips WEIGHTS]
  upgen import hf --from HF_DIR --family bart|dalle --out INIT
  upgen export hf --workdir W --out HF_DIR
  upgen align --workdir INIT --data RECORDS
  upgen train --config configs/upgen.py:tiny --workdir W [--config.KEY=VALUE ...]
  upgen sample --workdir W --prompts FILE --per-prompt K --out DIR
  upgen demo --workdir W [--port P] [--scorer CLIP_RUN]   (pip install -e .[demo])
  upgen bench train|sample --config configs/upgen.py:large [--config.KEY=VALUE ...]
  upgen bench data --data-dir DIR

Errors a user can fix print on one line, `upgen <command>: error: ...`, exit status 2; add
--debug (or set UPGEN_DEBUG=1) for the traceback. They are upgen's own (upgen.errors, bad
arguments among them) and the operating system's about a path the user named (missing, in
the way, not a directory, not writable, disk full).
"""
from __future__ import annotations

import errno
import importlib
import os
import sys

from upgen import errors
from upgen.evaluators import registry

# (command words) -> module whose main(argv) runs it.
COMMANDS = {
    ("quickstart",): "upgen.tools.quickstart",
    ("data", "shapes"): "upgen.datasets.shapes",
    ("data", "docstrings"): "upgen.datasets.docstrings",
    ("data", "profile"): "upgen.datasets.profile",
    ("data", "folder"): "upgen.datasets.folders",
    ("import", "hf"): "upgen.interop.hf_import",
    ("align",): "upgen.interop.align",
    ("export", "hf"): "upgen.interop.hf_export",
    ("tokenizer", "text"): "upgen.tokenizers.text",
    ("tokenize",): "upgen.datasets.tokenize",
    ("train",): "upgen.train.main",
    ("sample",): "upgen.tools.sample",
    ("demo",): "upgen.tools.demo_page",
    ("bench", "train"): "upgen.tools.bench",
    ("bench", "sample"): "upgen.tools.bench",
    ("bench", "data"): "upgen.tools.bench",
}


def _usage() -> str:
  lines = ["usage: upgen COMMAND [ARGS]", "", "commands:"]
  lines += ["  upgen " + " ".join(words) for words in COMMANDS]
  lines += [f"  upgen eval {name.replace('_', '-')}" for name in registry.names("main")]
  return "\n".join(lines)


# A path the user named that is missing, in the way, or not writable: theirs to fix.
PATH_ERRNOS = (errno.ENOENT, errno.EEXIST, errno.ENOTDIR, errno.EISDIR, errno.EACCES,
               errno.EPERM, errno.EROFS, errno.ENOSPC, errno.ENAMETOOLONG)


def path_error(e: OSError) -> str | None:
  """One line for an OSError on a named path (`PATH: No such file or directory`), None
  for any other (a bug, which keeps its traceback)."""
  if e.errno not in PATH_ERRNOS or not e.filename:
    return None
  if e.errno == errno.EEXIST and os.path.isfile(e.filename):
    return f"{e.filename}: a file is there; a directory is wanted"
  other = f" -> {e.filename2}" if e.filename2 else ""
  return f"{e.filename}{other}: {e.strerror}"


def _debug(argv: list[str]) -> bool:
  return "--debug" in argv or os.environ.get("UPGEN_DEBUG", "") not in ("", "0")


def _commands(argv: list[str]):
  """(command words, a call that runs it) for the command argv names (none: usage)."""
  if argv[:1] == ["eval"] and len(argv) > 1 and not argv[1].startswith("-"):
    yield tuple(argv[:2]), lambda: registry.main(argv[1:])  # Evaluators by name.
    return
  for words, module_name in sorted(COMMANDS.items(), key=lambda kv: -len(kv[0])):
    if tuple(argv[:len(words)]) == words:
      rest = argv[len(words):] if module_name != "upgen.tools.bench" else argv[1:]
      yield words, lambda: importlib.import_module(module_name).main(rest)
      return


def main(argv: list[str] | None = None) -> int:
  """Runs the command; an error the user can fix (upgen.errors.UserError) prints as
  `upgen <command>: error: <message>` and exits 2, with its traceback under --debug or
  UPGEN_DEBUG=1."""
  argv = list(sys.argv[1:] if argv is None else argv)
  debug = _debug(argv)
  argv = [a for a in argv if a != "--debug"]
  for words, command in _commands(argv):
    try:
      return int(command() or 0)
    except (errors.UserError, OSError) as e:
      message = e if isinstance(e, errors.UserError) else path_error(e)
      if debug or message is None:
        raise
      print(f"upgen {' '.join(words)}: error: {message}", file=sys.stderr)
      return 2
  print(_usage(), file=sys.stderr)
  return 0 if argv[:1] in (["-h"], ["--help"]) else 2


if __name__ == "__main__":
  sys.exit(main())
