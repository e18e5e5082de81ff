"""The `upgen` console script: one entry point, one small module per command.

  upgen quickstart --workdir W [--minutes M] [--source DIR]
  upgen data shapes --out DIR [--image-size 32 --num-train N --num-val N --num-test N --seed S]
  upgen eval shapes (--dir SPLIT_DIR | --manifest manifest.jsonl)
  upgen eval nll --workdir W [--split val] [--num 256]
  upgen eval captions --workdir W --data SPLIT_DIR [--num N]
  upgen tokenizer text --captions DIR --vocab-size N --out DIR
  upgen tokenize --source DIR --out DIR --text-tokenizer DIR --image-tokenizer RUN_DIR
  upgen train --config configs/upgen.py:tiny --workdir W [--config.KEY=VALUE ...]
  upgen sample --workdir W --prompts FILE --per-prompt K --out DIR
  upgen bench train|sample --config configs/upgen.py:large [--config.KEY=VALUE ...]
  upgen bench data --data-dir DIR
"""
from __future__ import annotations

import importlib
import sys

# (command words) -> module whose main(argv) runs it.
COMMANDS = {
    ("quickstart",): "upgen.quickstart",
    ("data", "shapes"): "upgen.data.shapes",
    ("eval", "shapes"): "upgen.data.shapes_eval",
    ("eval", "nll"): "upgen.likelihood",
    ("eval", "captions"): "upgen.caption_eval",
    ("tokenizer", "text"): "upgen.tokenizers.text",
    ("tokenize",): "upgen.data.tokenize",
    ("train",): "upgen.train.main",
    ("sample",): "upgen.sample",
    ("bench", "train"): "upgen.bench",
    ("bench", "sample"): "upgen.bench",
    ("bench", "data"): "upgen.bench",
}


def _usage() -> str:
  lines = ["usage: upgen COMMAND [ARGS]", "", "commands:"]
  lines += ["  upgen " + " ".join(words) for words in COMMANDS]
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  for words, module_name in sorted(COMMANDS.items(), key=lambda kv: -len(kv[0])):
    if tuple(argv[:len(words)]) == words:
      module = importlib.import_module(module_name)
      rest = argv[len(words):]
      if module_name == "upgen.bench":
        rest = argv[1:]
      return int(module.main(rest) or 0)
  print(_usage(), file=sys.stderr)
  return 0 if argv[:1] in (["-h"], ["--help"]) else 2


if __name__ == "__main__":
  sys.exit(main())
