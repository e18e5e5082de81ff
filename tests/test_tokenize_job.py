"""`upgen tokenize` as a job (upgen/datasets/tokenize_job.py): killed and started again it
ends with the records of an uninterrupted run; as 2 processes x 4 devices it writes the
records of 1 process; filters and exact-duplicate removal give the same records whatever the
shard count."""
import io
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from tests import test_multihost
from tests import test_tokenize as helpers
from tests import test_vqgan
from upgen import errors
from upgen.data import example_proto
from upgen.data import records
from upgen.data import sources
from upgen.datasets import shapes
from upgen.datasets import tokenize
from upgen.datasets import tokenize_examples
from upgen.datasets import tokenize_job
from upgen.tokenizers import image
from upgen.tokenizers import text
from upgen.train import trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 240


def _cli(*args, devices=1, **popen):
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=" ".join([
      os.environ.get("XLA_FLAGS", ""), f"--xla_force_host_platform_device_count={devices}"]))
  return subprocess.Popen([sys.executable, "-m", "upgen.cli", "tokenize", *args], cwd=ROOT,
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True, **popen)


def _finish(proc):
  out, err = proc.communicate(timeout=TIMEOUT_S)
  assert proc.returncode == 0, err[-3000:]
  return out


def _files(out_dir):
  """{name: bytes} of the records and metadata in out_dir (nothing else may be there)."""
  names = sorted(os.listdir(out_dir))
  assert names == ["metadata.json"] + sorted(n for n in names if n.endswith(".tfrecord"))
  return {n: open(os.path.join(out_dir, n), "rb").read() for n in names}


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
  """A folder of 600 captioned 96x64 noise photos (slow enough to decode that a job can be
  killed in the middle) and a BPE tokenizer for the captions."""
  root = tmp_path_factory.mktemp("photos")
  os.makedirs(root / "images")
  rng = np.random.default_rng(0)
  rows = []
  for i in range(600):
    Image.fromarray(rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)).save(
        root / "images" / f"{i:04d}.png")
    rows.append({"image": f"images/{i:04d}.png", "caption": f"photo number {i} of noise"})
  sources.write_captions(str(root), rows)
  bpe = text.train_bpe([r["caption"] for r in rows], 64, str(root / "bpe"))
  return str(root), bpe.path


def test_a_killed_job_started_again_ends_with_the_uninterrupted_records(photos, tmp_path):
  folder, bpe = photos
  args = ["--source", folder, "--text-tokenizer", bpe, "--pixels", "--image-size", "16",
          "--num-shards", "24", "--val-fraction", "0.05", "--batch-size", "8"]
  whole = str(tmp_path / "whole")
  _finish(_cli(*args, "--out", whole))

  out = str(tmp_path / "out")
  proc = _cli(*args, "--out", out)
  deadline = time.time() + TIMEOUT_S
  staged = []
  while proc.poll() is None and time.time() < deadline and not staged:
    dirs = [d for d in os.listdir(out) if d.startswith(".tokenize-")] if os.path.isdir(out) else []
    staged = [n for d in dirs for n in os.listdir(os.path.join(out, d)) if n.endswith(".json")]
    time.sleep(0.005)
  os.killpg(proc.pid, signal.SIGKILL)  # In the middle of the job: some shards done.
  proc.wait()
  assert proc.returncode == -signal.SIGKILL, "the job ended before it could be killed"
  assert not os.path.exists(os.path.join(out, "metadata.json"))
  (staging,) = [d for d in os.listdir(out) if d.startswith(".tokenize-")]
  done = [n for n in os.listdir(os.path.join(out, staging)) if n.endswith(".json")]
  assert 1 <= len(done) < 48  # 24 shards of train and 24 of val (--num-shards per split).

  printed = _finish(_cli(*args, "--out", out))
  assert f"{len(done)} of 48 shard(s) already written" in printed, printed
  assert _files(out) == _files(whole)  # Byte for byte, metadata included.


@pytest.fixture(scope="module")
def shapes_run(tmp_path_factory):
  """A 16 px shapes folder, a BPE for it and a VQGAN run (2 steps) to tokenize it with."""
  root = tmp_path_factory.mktemp("shapes_run")
  images = str(root / "shapes")
  shapes.generate(images, image_size=16, num_train=40, num_val=8, num_test=8, seed=0)
  bpe = text.train_bpe([e["caption"] for e in sources.read_captions(os.path.join(images, "train"))],
                       64, str(root / "bpe"))
  config = test_vqgan.small_config()
  config.update_from_flattened_dict({"data.dir": images, "data.batch_size": 4,
                                     "train.steps": 2, "train.progress": False,
                                     "train.eval_batches": 1})
  trainer.train(config, str(root / "vqgan"))
  return images, bpe.path, str(root / "vqgan")


@pytest.mark.multidevice
def test_two_processes_of_four_devices_write_the_records_of_one(shapes_run, tmp_path):
  images, bpe, vqgan = shapes_run
  args = ["--source", images, "--text-tokenizer", bpe, "--image-tokenizer", vqgan, "--pixels",
          "--num-shards", "3", "--batch-size", "6"]
  port = test_multihost._free_port()  # pylint: disable=protected-access
  procs = [_cli(*args, "--out", str(tmp_path / "two"), f"--coordinator_address=localhost:{port}",
                "--num_processes=2", f"--process_id={i}", devices=4) for i in range(2)]
  one = _cli(*args, "--out", str(tmp_path / "one"), devices=4)
  printed = [_finish(p) for p in procs + [one]]
  # Each process wrote its share: of the 9 shards (train 13, 13, 14; val and test 2, 3, 3
  # examples), process 1 shards 1, 3, 5, 7 and process 0 the others.
  assert "process 1: 21 examples" in printed[1] and "process 0: 35 examples" in printed[0]
  assert "wrote" in printed[0] and "wrote" not in printed[1]  # Process 0 wrote metadata.
  assert _files(str(tmp_path / "two")) == _files(str(tmp_path / "one"))
  meta = records.read_metadata(str(tmp_path / "two"))
  assert [sum(meta["splits"][s]["records_per_shard"]) for s in ("train", "val", "test")] == \
      [40, 8, 8]
  # Encoded over 4 devices, the tokens are those of one device (this process has one).
  data = records.RecordDataSource(str(tmp_path / "two"), "train")
  pngs = [example_proto.decode_example(data.read(i))["image_png"][0] for i in range(40)]
  pixels = np.stack([np.asarray(Image.open(io.BytesIO(png))) for png in pngs])
  tokens = np.stack([data[i]["image_tokens"] for i in range(40)])
  np.testing.assert_array_equal(image.load(vqgan).encode(pixels).reshape(40, -1), tokens)


def _filter_folder(root):
  """16 examples: 0-5 distinct, 6 a copy of 1 (a later shard), 7 a copy of 6's pixels with
  another caption (kept), 8 a 4 px image, 9 a two-letter caption, 10 a long caption, 11-15
  copies of 11 (one shard)."""
  os.makedirs(root / "images", exist_ok=True)
  rng = np.random.default_rng(1)
  pixels = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(12)]
  captions = [f"red and {c}" for c in "abcdefgh"] + ["tiny", "ab", "blue " * 12, "green"]
  pixels[6], captions[6] = pixels[1], captions[1]
  pixels[7] = pixels[6]
  pixels[8] = pixels[8][:4, :4]
  rows = []
  for i in range(16):
    k = min(i, 11)
    Image.fromarray(pixels[k]).save(root / "images" / f"{i:02d}.png")
    rows.append({"image": f"images/{i:02d}.png", "caption": captions[k], "id": f"x{i}"})
  sources.write_captions(str(root), rows)
  return str(root)


def test_filters_and_duplicates_drop_the_same_records_at_any_shard_count(tmp_path):
  source = sources.ImageFolderSource(_filter_folder(tmp_path / "raw"), 8)
  filters = tokenize_examples.Filters(min_side=8, min_chars=3, max_chars=40, dedup=True)
  kept = {}
  for shards in (1, 4):
    out = str(tmp_path / f"out{shards}")
    meta = tokenize.tokenize_folder({"train": source}, out, helpers.CharTokenizer(),
                                    helpers.PatchColorTokenizer(), num_shards=shards,
                                    filters=filters)
    info = meta["splits"]["train"]
    kept[shards] = [records.RecordDataSource(out, "train")[i]["id"]
                    for i in range(sum(info["records_per_shard"]))]
    # Duplicates are named as found: within a shard as it is written, across at the commit.
    info["filtered"]["duplicate"]["first"].sort()
    assert info["filtered"] == {
        "duplicate": {"count": 5, "first": ["x12", "x13", "x14", "x15", "x6"]},
        "image_too_small": {"count": 1, "first": ["x8"]},
        "caption_too_short": {"count": 1, "first": ["x9"]},
        "caption_too_long": {"count": 1, "first": ["x10"]}}
    assert not [n for n in os.listdir(out) if n.startswith(".tokenize-")]
  assert kept[1] == kept[4] == ["x0", "x1", "x2", "x3", "x4", "x5", "x7", "x11"]


def test_a_caption_with_no_text_tokens_is_counted_not_fatal(tmp_path):
  class Silent(helpers.CharTokenizer):
    def encode_batch(self, texts):
      return [[] if t == "blue and blue" else ids for t, ids in
              zip(texts, super().encode_batch(texts))]

  pairs = helpers.PAIRS[:8] + [("blue", "blue")]
  source = sources.ImageFolderSource(helpers._write_folder(tmp_path / "raw", pairs), 8)  # pylint: disable=protected-access
  with pytest.raises(errors.BadExample, match="no tokens for example 'x8'"):
    tokenize.tokenize_folder({"train": source}, str(tmp_path / "strict"), Silent(),
                             helpers.PatchColorTokenizer())
  meta = tokenize.tokenize_folder({"train": source}, str(tmp_path / "out"), Silent(),
                                  helpers.PatchColorTokenizer(), max_bad_fraction=0.2)
  assert meta["splits"]["train"]["skipped"] == {"no_text_tokens": {"count": 1, "first": ["x8"]}}
  assert meta["splits"]["train"]["records_per_shard"] == [8]


def test_the_plan_cuts_contiguous_blocks_and_the_job_key_follows_the_settings(tmp_path):
  units = tokenize_job.plan({"train": range(10), "val": range(3)}, num_shards=4)
  assert [(u.split, u.start, u.stop) for u in units] == [
      ("train", 0, 2), ("train", 2, 5), ("train", 5, 7), ("train", 7, 10),
      ("val", 0, 0), ("val", 0, 1), ("val", 1, 2), ("val", 2, 3)]
  source = sources.ImageFolderSource(helpers._write_folder(tmp_path / "raw", helpers.PAIRS[:4]), 8)  # pylint: disable=protected-access

  def key(**changes):
    settings = dict(kind="paired", replace_metadata=True, progress=False, pixels=False,
                    max_bad_fraction=0.0, filters=tokenize_examples.Filters())
    settings.update(changes)
    return tokenize._job({"train": source}, str(tmp_path), helpers.CharTokenizer(),  # pylint: disable=protected-access
                         helpers.PatchColorTokenizer(), None, 64, **settings).key

  same = key()
  assert key() == same and key(max_bad_fraction=0.5) == same  # The threshold is checked anew.
  assert key(pixels=True) != same and key(filters=tokenize_examples.Filters(dedup=True)) != same
  with open(os.path.join(tmp_path, "raw", "captions.jsonl"), "a") as f:  # An edited source.
    f.write(json.dumps({"image": "images/000.png", "caption": "red and red"}) + "\n")
  edited = sources.ImageFolderSource(str(tmp_path / "raw"), 8)
  assert tokenize._job({"train": edited}, str(tmp_path), helpers.CharTokenizer(),  # pylint: disable=protected-access
                       helpers.PatchColorTokenizer(), None, 64, kind="paired",
                       replace_metadata=True, progress=False, pixels=False,
                       max_bad_fraction=0.0, filters=tokenize_examples.Filters()).key != same
