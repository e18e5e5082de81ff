"""Test session setup: CPU only, and a persistent XLA compilation cache shared by the tests
and the subprocesses they start (most CPU test time is compilation of the same programs)."""
import os

_CACHE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      ".pytest_cache", "jax_compilation_cache")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# LLVM at -O0: XLA:CPU compiles the tests' programs about 1.5x faster, and they run for
# seconds only (numerics are XLA's, not LLVM's: the same results). Set XLA_FLAGS to override.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = " ".join(
      [os.environ.get("XLA_FLAGS", ""), "--xla_backend_optimization_level=0"]).strip()

import subprocess  # pylint: disable=g-import-not-at-top,g-bad-import-order
import sys  # pylint: disable=g-import-not-at-top,g-bad-import-order

import pytest  # pylint: disable=g-import-not-at-top,g-bad-import-order

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def tiny_quickstart(tmp_path_factory):
  """(workdir, stdout) of one seconds-long quickstart through the console script, shared by
  the tests that need real trained runs: data, BPE, VQGAN, records with pixels, UPGen
  (`model/`), its samples, and a CLIP scorer (`scorer/`) with best-of-2 reranking."""
  w = tmp_path_factory.mktemp("quickstart") / "qs"
  out = subprocess.run(
      [sys.executable, "-m", "upgen.cli", "quickstart", "--workdir", str(w), "--num-train",
       "512", "--num-val", "64", "--num-test", "64", "--vqgan-steps", "20", "--minutes", "0.2",
       "--max-captions", "3", "--per-prompt", "2", "--scorer-minutes", "0.05", "--rerank", "2"],
      cwd=ROOT, check=True, capture_output=True, text=True)
  return w, out.stdout


@pytest.hookimpl(tryfirst=True)  # Before xdist's own, which reads the groups into node ids.
def pytest_collection_modifyitems(items):
  """Under pytest-xdist (`-n 2`, as the README runs the suite): each module's tests stay on
  one worker, so a module fixture (the 8-device job of test_families) starts once, and the
  tests of the shared quickstart run on one worker, so it is trained once."""
  for item in items:
    group = ("tiny_quickstart" if "tiny_quickstart" in getattr(item, "fixturenames", ())
             else item.nodeid.split("::")[0])
    item.add_marker(pytest.mark.xdist_group(group))
