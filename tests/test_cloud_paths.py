"""gs:// data dirs and workdirs, through a fake "gs" fsspec filesystem over a local folder.

`_FakeGCS` maps gs://bucket/key to ROOT/bucket/key and, like an object store, needs no
parent directories. It is what etils.epath and fsspec hand gs:// paths to, so the code under
test runs the same calls it makes against gcsfs. Orbax writes arrays with tensorstore, whose
GCS driver cannot be faked offline: for checkpoints the tests check that upgen hands the
URL to orbax untouched, never touches it with local filesystem calls, and that orbax makes
its directory in the (fake) bucket through epath.
"""
import builtins
import importlib
import json
import os
import posixpath
import types

import fsspec
import numpy as np
import orbax.checkpoint as ocp
import pytest
from etils import epath
from etils.epath import backend as epath_backend
from etils.epath import gpath
from fsspec.implementations.local import LocalFileSystem
from fsspec.utils import stringify_path
from orbax.checkpoint._src.path import gcs_utils

from configs import upgen as upgen_config
from upgen import paths
from upgen.data import pipeline
from upgen.data import records
from upgen.data import sources
from upgen.data import tfrecord
from upgen.datasets import tokenize
from upgen.data.spec import DataSpec
from upgen.tokenizers import text as text_tok
from upgen.runtime import checkpoint
from upgen.runtime import writers
from tests import test_tokenize as tok_helpers

_REGISTRY = importlib.import_module("fsspec.registry")  # fsspec.registry is a mapping proxy.


class _FakeGCS(LocalFileSystem):
  """gs://bucket/key -> ROOT/bucket/key on local disk; writes create parents as needed."""
  protocol = ("gs", "gcs")
  root_dir = ""

  def __init__(self, *args, **kwargs):
    super().__init__(*args, auto_mkdir=True, **kwargs)

  @classmethod
  def _strip_protocol(cls, path):
    path = stringify_path(path)
    for prefix in ("gs://", "gcs://"):
      if path.startswith(prefix):
        return posixpath.join(cls.root_dir, path[len(prefix):]).rstrip("/")
    return super()._strip_protocol(path)


# pylint: disable=protected-access
def _clear_caches():
  epath_backend._FileSystemSpecBackend._get_filesystem.cache_clear()
  pipeline._open_split.cache_clear()


@pytest.fixture
def bucket(tmp_path, monkeypatch):
  """The local folder behind gs://bucket; the cwd is a fresh folder, to catch a local
  "gs:" directory made by a path that missed the cloud code."""
  root = tmp_path / "gcs"
  root.mkdir()
  monkeypatch.setattr(_FakeGCS, "root_dir", str(root))
  for protocol in ("gs", "gcs"):  # What fsspec.register_implementation(clobber=True) does.
    monkeypatch.setitem(_REGISTRY._registry, protocol, _FakeGCS)
  monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)  # epath: fsspec, not tf.gfile.
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  _clear_caches()
  epath.Path("gs://bucket/probe.txt").write_text("routed")
  assert (root / "bucket" / "probe.txt").read_text() == "routed"
  fs, _ = fsspec.core.url_to_fs("gs://bucket/probe.txt")
  assert isinstance(fs, _FakeGCS)
  yield root / "bucket"
  assert not os.path.exists(cwd / "gs:"), "a gs:// path was used as a local path"
  _clear_caches()


def _tokenize_into(out, raw):
  split_sources = {"train": sources.ImageFolderSource(raw, 8),
                   "val": sources.SubsetSource(sources.ImageFolderSource(raw, 8), [0, 1, 2, 3])}
  return tokenize.tokenize_folder(split_sources, out, tok_helpers.CharTokenizer(),
                                  tok_helpers.PatchColorTokenizer(), num_shards=3)


def _config(data_dir):
  c = upgen_config.get_config("tiny")
  c.data.dir, c.data.batch_size, c.data.text_seq_len = data_dir, 4, 8
  c.data.text_dropout = 0.0
  return c


def test_tokenized_records_in_gs_read_back_like_a_local_copy(bucket, tmp_path):
  raw = tok_helpers._write_folder(tmp_path / "raw", tok_helpers.PAIRS)
  local = str(tmp_path / "local")
  local_meta = _tokenize_into(local, raw)
  remote_meta = _tokenize_into("gs://bucket/data", raw)
  assert remote_meta == local_meta  # Same shards, counts and sha256.
  names = sorted(os.listdir(local))
  assert sorted(os.listdir(bucket / "data")) == names  # No .tmp files left behind.
  for name in names:
    assert (bucket / "data" / name).read_bytes() == open(os.path.join(local, name), "rb").read()
  records.verify_sha256("gs://bucket/data", "train")

  src_local = records.RecordDataSource(local, "train")
  src_remote = records.RecordDataSource("gs://bucket/data", "train")
  assert src_remote.where(5).startswith("gs://bucket/data/train-")
  order = [7, 0, 15, 3, 3, 11]
  assert src_remote.read_many(order) == src_local.read_many(order)
  for i in order:
    assert src_remote.read(i) == src_local.read(i)
    assert src_remote[i]["id"] == src_local[i]["id"]

  spec = pipeline.token_spec(_config(local).data)
  assert pipeline.token_spec(_config("gs://bucket/data").data) == spec
  it_local, it_remote = (pipeline.make_train_iterator(_config(d), spec)
                         for d in (local, "gs://bucket/data"))
  for _ in range(6):  # More than an epoch of 16 examples in batches of 4.
    a, b = next(it_local), next(it_remote)
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  evals = [list(pipeline.make_eval_iterator(_config(d), spec, "val"))
           for d in (local, "gs://bucket/data")]
  assert len(evals[0]) == len(evals[1]) == 1
  np.testing.assert_array_equal(evals[0][0]["image_tokens"], evals[1][0]["image_tokens"])


def test_tokenizing_again_replaces_the_old_shards_in_gs(bucket, tmp_path):
  raw = tok_helpers._write_folder(tmp_path / "raw", tok_helpers.PAIRS)
  _tokenize_into("gs://bucket/data", raw)
  tokenize.tokenize_split(sources.ImageFolderSource(raw, 8), "gs://bucket/data", "train",
                          tok_helpers.CharTokenizer(), tok_helpers.PatchColorTokenizer(),
                          num_shards=2)
  shards = sorted(n for n in os.listdir(bucket / "data") if n.startswith("train-"))
  assert shards == ["train-00000-of-00002.tfrecord", "train-00001-of-00002.tfrecord"]
  meta = records.read_metadata("gs://bucket/data")
  assert meta["splits"]["train"]["shards"] == shards and "val" in meta["splits"]


def test_corrupted_shard_in_gs_is_named_like_a_local_one(bucket, tmp_path):
  raw = tok_helpers._write_folder(tmp_path / "raw", tok_helpers.PAIRS)
  local = str(tmp_path / "local")
  for out, shard_dir in ((local, local), ("gs://bucket/data", str(bucket / "data"))):
    _tokenize_into(out, raw)
    shard = os.path.join(shard_dir, "train-00001-of-00003.tfrecord")
    data = bytearray(open(shard, "rb").read())
    data[40] ^= 0x10  # Inside the first record's data.
    open(shard, "wb").write(bytes(data))
  errors = []
  for out in (local, "gs://bucket/data"):
    with pytest.raises(tfrecord.CorruptRecordError) as e:
      records.RecordDataSource(out, "train")
    errors.append(str(e.value))
  assert errors[1].startswith("gs://bucket/data/train-00001-of-00003.tfrecord: data CRC mismatch "
                              "in record 0 at byte offset 0")
  assert errors[1] == errors[0].replace(local, "gs://bucket/data")
  with pytest.raises(records.MetadataError, match=r"gs://bucket/data/train-00001-of-00003\."
                                                  r"tfrecord: sha256 [0-9a-f]+ differs"):
    records.verify_sha256("gs://bucket/data", "train")


def test_metrics_config_and_tensorboard_land_in_the_gs_workdir(bucket, tmp_path, monkeypatch):
  monkeypatch.setattr(paths, "SYNC_SECONDS", 3600.0)
  grid = np.zeros((4, 6, 3), np.uint8)
  local = str(tmp_path / "run")
  for workdir in (local, "gs://bucket/run"):
    w = writers.MetricWriter(workdir)
    w.write_scalars(1, {"loss": np.float32(2.5), "lr": 1e-3})
    w.write_scalars(2, {"loss": 2.0, "lr": 1e-3})
    w.write_images(2, {"samples": grid})
    if workdir.startswith("gs://"):  # Object stores cannot append: the first flush uploads,
      rows = (bucket / "run" / "metrics.jsonl").read_text().splitlines()
      assert [json.loads(r)["step"] for r in rows] == [1]  # later ones wait SYNC_SECONDS,
    w.close()  # and close uploads everything.
  assert (bucket / "run" / "metrics.jsonl").read_text() == open(
      os.path.join(local, "metrics.jsonl")).read()
  assert [r["step"] for r in writers.read_metrics("gs://bucket/run")] == [1, 2]
  [events] = os.listdir(bucket / "run" / "tensorboard")
  [local_events] = os.listdir(os.path.join(local, "tensorboard"))
  remote_records = list(tfrecord.read_records(f"gs://bucket/run/tensorboard/{events}"))
  local_records = list(tfrecord.read_records(os.path.join(local, "tensorboard", local_events)))
  assert len(remote_records) == len(local_records) == 1 + 4 + 1  # version, 2x2 scalars, image.

  # A resumed run drops the rows after its checkpoint, then appends.
  writers.truncate_metrics("gs://bucket/run", 1)
  w = writers.MetricWriter("gs://bucket/run", tensorboard=False)
  w.write_scalars(2, {"loss": 1.5})
  w.close()
  assert [(r["step"], r["loss"]) for r in writers.read_metrics("gs://bucket/run")] == [
      (1, 2.5), (2, 1.5)]

  config = upgen_config.get_config("tiny")
  spec = DataSpec(text_vocab_size=31, text_seq_len=8, image_vocab_size=8, image_grid=(2, 2))
  checkpoint.save_run_config(local, config, spec)
  checkpoint.save_run_config("gs://bucket/run", config, spec)
  for name in ("config.json", "data_spec.json"):
    assert (bucket / "run" / name).read_text() == open(os.path.join(local, name)).read()
  remote_config, remote_spec = checkpoint.load_run_config("gs://bucket/run")
  assert remote_config.to_dict() == checkpoint.load_run_config(local)[0].to_dict()
  assert remote_spec == spec
  with pytest.raises(FileNotFoundError, match="gs://bucket/other/config.json: no config.json"):
    checkpoint.load_run_config("gs://bucket/other")


@pytest.fixture
def no_local_ops_on_gs(monkeypatch):
  """os / builtins file calls raise on a "gs:" path (the fake GCS passes them local paths)."""
  def guard(fn):
    def guarded(path, *args, **kwargs):
      if isinstance(path, (str, os.PathLike)) and str(os.fspath(path)).startswith("gs:"):
        raise AssertionError(f"{fn.__name__}({path!r}) on a cloud path")
      return fn(path, *args, **kwargs)
    return guarded
  for module, name in ((os, "makedirs"), (os, "mkdir"), (os, "remove"), (os, "replace"),
                       (os, "stat"), (os.path, "exists"), (os.path, "abspath"),
                       (builtins, "open")):
    monkeypatch.setattr(module, name, guard(getattr(module, name)))


def test_checkpointer_hands_the_gs_url_to_orbax(bucket, no_local_ops_on_gs, monkeypatch):
  calls = []

  class RecordingManager:
    def __init__(self, directory, options=None, item_handlers=None):
      calls.append((directory, options.max_to_keep, sorted(item_handlers)))

  monkeypatch.setattr(ocp, "CheckpointManager", RecordingManager)
  checkpoint.save_run_config("gs://bucket/run", upgen_config.get_config("tiny"), DataSpec())
  left = bucket / "run" / "checkpoints" / "7.orbax-checkpoint-tmp-123" / "state"
  left.mkdir(parents=True)  # A killed save's unfinished write: the trainer removes it.
  (left / "x").write_text("partial")
  checkpoint.Checkpointer("gs://bucket/run", keep=2, owner=True)
  assert calls == [("gs://bucket/run/checkpoints", 2, ["data", "state"])]
  assert (bucket / "run" / "config.json").exists()
  assert not (bucket / "run" / "checkpoints" / "7.orbax-checkpoint-tmp-123").exists()


def test_orbax_makes_its_gs_directory_through_epath(bucket, no_local_ops_on_gs, monkeypatch):
  # Orbax asks the GCS API (google.cloud.storage) whether the bucket has hierarchical
  # namespace; this fake bucket has not.
  monkeypatch.setattr(gcs_utils, "get_bucket",
                      lambda name: types.SimpleNamespace(hierarchical_namespace_enabled=False))
  ckpt = checkpoint.Checkpointer("gs://bucket/run", async_save=False)
  try:
    assert ckpt.latest_step() is None
  finally:
    ckpt.close()
  assert (bucket / "run" / "checkpoints").is_dir()


def test_bpe_tokenizer_loads_from_gs(bucket, tmp_path):
  tok = text_tok.train_bpe(["a red square", "a blue circle"] * 20, 64, str(tmp_path / "tok"))
  (bucket / "tok").mkdir()
  (bucket / "tok" / "tokenizer.json").write_bytes(
      (tmp_path / "tok" / "tokenizer.json").read_bytes())
  remote = text_tok.load("gs://bucket/tok")
  assert remote.identity() == tok.identity() and remote.path == "gs://bucket/tok"
  assert remote.encode("a red circle") == tok.encode("a red circle")


def test_missing_gcsfs_is_an_error_naming_the_path(tmp_path, monkeypatch):
  missing = {"class": "no_such_module.GCSFileSystem",
             "err": "Please install gcsfs to access Google Storage"}
  for protocol in ("gs", "gcs"):
    monkeypatch.delitem(_REGISTRY._registry, protocol, raising=False)
    monkeypatch.setitem(_REGISTRY.known_implementations, protocol, missing)
  monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)
  monkeypatch.chdir(tmp_path)
  _clear_caches()
  want = (r"gs://bucket/data/metadata\.json: gs:// paths need the packages of upgen's gcs "
          r"extra \(gcsfs, google-cloud-storage\), not installed here \(pip install -e")
  with pytest.raises(paths.MissingFilesystemError, match=want):
    records.read_metadata("gs://bucket/data")
  with pytest.raises(ImportError, match=r"gs://bucket/run/metrics\.jsonl: .*gcsfs"):
    writers.MetricWriter("gs://bucket/run").close()
  with pytest.raises(ImportError, match=r"gs://bucket/run/checkpoints: .*pip install -e"):
    checkpoint.Checkpointer("gs://bucket/run")
  with pytest.raises(ImportError, match=r"gs://bucket/d/x\.tfrecord: .*gcsfs"):
    paths.read_ranges("gs://bucket/d/x.tfrecord", [0], [4])
  assert not os.path.exists(tmp_path / "gs:")
  _clear_caches()
