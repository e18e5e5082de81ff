"""`upgen data docstrings --out DIR`: a plain-English text corpus every machine has, the
docstrings of Python's standard library, for pretraining a small language model offline
(docs/dalle.md: starting the decoder-only family from a pretrained LM).

The stdlib's .py files are parsed (never imported) with `ast`; every module, class and
function docstring is split into paragraphs, whitespace collapsed; paragraphs of at least
`--min-words` words that hold no code-like lines (doctest prompts, indented blocks) are
kept, once each. Each goes to train, val or test by a hash of its text (90 / 5 / 5), so the
split does not depend on file order. Written (the layout `upgen tokenize --kind text`
reads, images absent):

  DIR/<split>/captions.jsonl   {"caption": paragraph, "id": "<module>:<line>"} per line
  DIR/<split>.txt              the same paragraphs, one per line (`upgen eval text-ppl`)
  DIR/docstrings.json          the Python version and directory read, and the counts

Different Python versions have different docstrings: the counts name the version.
"""
from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import re
import sys
import sysconfig
from typing import Iterator, Optional

from upgen import errors

SPLITS = (("train", 90), ("val", 5), ("test", 5))
SKIP_DIRS = {"test", "tests", "idlelib", "lib2to3", "site-packages", "turtledemo",
             "__pycache__", "ensurepip", "tkinter", "pydoc_data"}


def _docstrings(path: str) -> Iterator[tuple[int, str]]:
  try:
    with open(path, encoding="utf-8") as f:
      tree = ast.parse(f.read(), filename=path)
  except (SyntaxError, UnicodeDecodeError, ValueError):
    return
  for node in ast.walk(tree):
    if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
      doc = ast.get_docstring(node, clean=True)
      if doc:
        yield getattr(node, "lineno", 1), doc


def paragraphs(doc: str, min_words: int) -> Iterator[str]:
  """Prose paragraphs of a docstring, each on one line."""
  for block in re.split(r"\n\s*\n", doc):
    lines = block.splitlines()
    if any(l.startswith((" ", "\t", ">>>", "...")) for l in lines):
      continue  # Code, doctests, argument tables.
    text = " ".join(l.strip() for l in lines).strip()
    if len(text.split()) >= min_words and re.search(r"[a-z]", text):
      yield text


def split_of(text: str) -> str:
  bucket = int(hashlib.sha256(text.encode()).hexdigest(), 16) % 100
  for name, share in SPLITS:
    if bucket < share:
      return name
    bucket -= share
  raise AssertionError


def collect(stdlib: str, min_words: int = 6) -> dict[str, list[dict[str, str]]]:
  """{split: [{"caption", "id"}]} from every .py file under `stdlib` (sorted walk)."""
  seen, out = set(), {name: [] for name, _ in SPLITS}
  for root, dirs, files in os.walk(stdlib):
    dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith("."))
    for name in sorted(f for f in files if f.endswith(".py")):
      path = os.path.join(root, name)
      module = os.path.relpath(path, stdlib)[:-3].replace(os.sep, ".")
      for line, doc in _docstrings(path):
        for text in paragraphs(doc, min_words):
          if text not in seen:
            seen.add(text)
            out[split_of(text)].append({"caption": text, "id": f"{module}:{line}"})
  return out


def write(out_dir: str, stdlib: Optional[str] = None, min_words: int = 6) -> dict:
  stdlib = stdlib or sysconfig.get_paths()["stdlib"]
  if not os.path.isdir(stdlib):
    raise errors.NotFound(f"--stdlib {stdlib}: no such directory")
  corpus = collect(stdlib, min_words)
  if not corpus["train"]:
    raise errors.DataError(f"{stdlib}: no docstring paragraphs found")
  for split, rows in corpus.items():
    os.makedirs(os.path.join(out_dir, split), exist_ok=True)
    with open(os.path.join(out_dir, split, "captions.jsonl"), "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in rows)
    with open(os.path.join(out_dir, f"{split}.txt"), "w") as f:
      f.writelines(r["caption"] + "\n" for r in rows)
  info = {"python": sys.version.split()[0], "stdlib": stdlib, "min_words": min_words,
          "paragraphs": {s: len(r) for s, r in corpus.items()},
          "words": {s: sum(len(r["caption"].split()) for r in rows) for s, rows in corpus.items()}}
  with open(os.path.join(out_dir, "docstrings.json"), "w") as f:
    json.dump(info, f, indent=1)
  return info


def main(argv: Optional[list[str]] = None) -> int:
  parser = errors.ArgumentParser(prog="upgen data docstrings", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", required=True)
  parser.add_argument("--stdlib", default=None, help="Directory to read (default: this "
                      "Python's standard library).")
  parser.add_argument("--min-words", type=errors.whole(1), default=6)
  args = parser.parse_args(argv)
  print(json.dumps(write(args.out, args.stdlib, args.min_words)))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
