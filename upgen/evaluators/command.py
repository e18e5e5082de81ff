"""What every `upgen eval NAME` command shares: its parser and how it reports."""
from __future__ import annotations

import argparse
import json
import os
from typing import Any, Optional

from upgen import errors


def parser(name: str, doc: Optional[str]) -> argparse.ArgumentParser:
  """`upgen eval NAME`'s parser; its help shows the evaluator module's docstring as written."""
  return errors.ArgumentParser(prog=f"upgen eval {name}", description=doc,
                               formatter_class=argparse.RawDescriptionHelpFormatter)


def emit(result: Any, path: Optional[str] = None, *, indent: Optional[int] = None) -> None:
  """Prints the result as one JSON document and, with a path, writes the same there."""
  print(json.dumps(result, indent=indent))
  if path:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
      json.dump(result, f, indent=indent)
