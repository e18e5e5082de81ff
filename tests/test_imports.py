"""The package's layers (.importlinter): every import runs down the layer order, no cycles,
and upgen's own modules are imported at the top of a module, never inside a function."""
import ast
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINT = os.path.join(os.path.dirname(sys.executable), "lint-imports")


def lint(root: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, PYTHONPATH=root)
  return subprocess.run([LINT, "--config", os.path.join(root, ".importlinter")], cwd=root,
                        env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture
def tree(tmp_path):
  """A copy of the package, configs and the contract, to break."""
  for name in ("upgen", "configs"):
    shutil.copytree(os.path.join(ROOT, name), tmp_path / name,
                    ignore=shutil.ignore_patterns("__pycache__"))
  shutil.copy(os.path.join(ROOT, ".importlinter"), tmp_path / ".importlinter")
  return tmp_path


def add_import(path, line: str) -> None:
  text = path.read_text()
  head, sep, rest = text.partition("\nfrom upgen")
  path.write_text(head + "\n" + line + sep + rest)


def test_the_layers_hold():
  result = lint(ROOT)
  assert result.returncode == 0, result.stdout + result.stderr
  assert "0 broken" in result.stdout


def test_an_upward_import_breaks_the_layers(tree):
  # The runtime reaching up into the trainer.
  add_import(tree / "upgen" / "runtime" / "checkpoint.py", "from upgen.train import trainer")
  result = lint(str(tree))
  assert result.returncode != 0
  assert "upgen.runtime is not allowed to import upgen.train" in result.stdout
  assert "upgen.runtime.checkpoint -> upgen.train.trainer" in result.stdout


def test_a_cycle_inside_a_layer_breaks_the_contract(tree):
  # mesh <- restore already; mesh -> restore closes a cycle inside runtime/, which the layers
  # contract cannot see (same layer) but the acyclic contract does.
  add_import(tree / "upgen" / "runtime" / "mesh.py", "from upgen.runtime import restore")
  result = lint(str(tree))
  assert result.returncode != 0
  assert "no import cycles inside a layer BROKEN" in result.stdout
  assert "upgen's layers KEPT" in result.stdout


def own_imports_inside_functions(path: str) -> list[str]:
  tree = ast.parse(open(path).read())
  found = []

  class Visitor(ast.NodeVisitor):
    depth = 0

    def visit_FunctionDef(self, node):
      self.depth += 1
      self.generic_visit(node)
      self.depth -= 1

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ImportFrom(self, node):
      if self.depth and (node.module or "").split(".")[0] in ("upgen", "configs"):
        found.append(f"{path}:{node.lineno}")

    def visit_Import(self, node):
      if self.depth and any(a.name.split(".")[0] in ("upgen", "configs") for a in node.names):
        found.append(f"{path}:{node.lineno}")

  Visitor().visit(tree)
  return found


def test_own_modules_are_imported_at_the_top(tmp_path):
  found = [hit for folder, _, files in os.walk(os.path.join(ROOT, "upgen"))
           for name in files if name.endswith(".py")
           for hit in own_imports_inside_functions(os.path.join(folder, name))]
  assert not found, found
  # The check itself sees one.
  bad = tmp_path / "bad.py"
  bad.write_text("def f():\n  from upgen import errors\n  return errors\n")
  assert own_imports_inside_functions(str(bad)) == [f"{bad}:2"]
