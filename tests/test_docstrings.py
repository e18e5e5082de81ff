"""`upgen data docstrings`: prose paragraphs of docstrings, parsed not imported, split by a
hash of their text."""
import json

from upgen import cli
from upgen.datasets import docstrings

SOURCE = '''"""A module about shapes.

It draws a red circle and a blue square on a black background for the tests.

    >>> draw()   # code: not prose
"""


def f():
  """Returns the answer to a question that nobody has asked yet, in words.

  Args:
    x: indented lines are an argument table, skipped.
  """
  raise SystemExit("importing this file would have stopped the test")


class C:
  """Too short."""
'''


def test_docstrings_keep_prose_skip_code_and_split_by_content(tmp_path):
  lib = tmp_path / "lib"
  (lib / "pkg").mkdir(parents=True)
  (lib / "mod.py").write_text(SOURCE)
  (lib / "pkg" / "copy.py").write_text(SOURCE)  # Same paragraphs: kept once.
  (lib / "test").mkdir()
  (lib / "test" / "t.py").write_text('"""A test module that should never be read at all here."""')
  (lib / "broken.py").write_text("def (:\n")  # Unparsable: skipped.
  out = tmp_path / "out"
  assert cli.main(["data", "docstrings", "--out", str(out), "--stdlib", str(lib)]) == 0
  info = json.loads((out / "docstrings.json").read_text())
  rows = [json.loads(l) for s in ("train", "val", "test")
          for l in (out / s / "captions.jsonl").read_text().splitlines()]
  texts = sorted(r["caption"] for r in rows)
  assert texts == sorted([
      "It draws a red circle and a blue square on a black background for the tests.",
      "Returns the answer to a question that nobody has asked yet, in words."])
  assert sum(info["paragraphs"].values()) == 2
  for r in rows:
    split = docstrings.split_of(r["caption"])
    assert r in [json.loads(l) for l in (out / split / "captions.jsonl").read_text().splitlines()]
    assert r["caption"] + "\n" in (out / f"{split}.txt").read_text()
  assert {r["id"] for r in rows} <= {"mod:1", "mod:9"}
