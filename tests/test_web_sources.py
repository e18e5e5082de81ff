"""Web-scale sources (upgen/data/web_sources.py) and bad examples counted by `upgen tokenize`.

The webdataset tar shards are read with the standard library: those tests run everywhere.
The Hugging Face tests need pyarrow (upgen's `web` extra) and the `datasets` library, which
writes their fixtures; they are skipped where either is absent, except under
UPGEN_REQUIRE_WEB=1 (.ci/run installs requirements-web-lock.txt and sets it). Every fixture
is built here, offline.
"""
import io
import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from PIL import Image

from tests import test_tokenize as helpers
from tests.test_cloud_paths import bucket  # pylint: disable=unused-import
from upgen import errors
from upgen.data import example_proto
from upgen.data import records
from upgen.data import sources
from upgen.data import web_sources
from upgen.datasets import tokenize
from upgen.datasets import tokenize_examples
from upgen.datasets import tokenize_job
from upgen.tokenizers import text

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 16


def _pixels(i):
  """A 24x16 image (cropped to 16x16 by the sources), different for every i."""
  rng = np.random.default_rng(i)
  return rng.integers(0, 256, (16, 24, 3), dtype=np.uint8)


def _encoded(i, fmt="PNG"):
  buf = io.BytesIO()
  Image.fromarray(_pixels(i)).save(buf, format=fmt)
  return buf.getvalue()


def _want(data):
  """The pixels a source must give for encoded image bytes: decoded, resized, cropped."""
  return sources.resize_and_crop(Image.open(io.BytesIO(data)), SIZE)


def _add(tar, name, data):
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


def _write_shards(folder):
  """Two shards in img2dataset's layout. 00000.tar: keys 0-3 png+txt, 4 jpg+json (with
  metadata), 5 webp+json, then the bad ones: 6 an undecodable png, 7 a png with no caption,
  8 a caption with no image. 00001.tar: keys 9-14 png+txt. Returns {id: (bytes, caption)}
  of the good examples."""
  os.makedirs(folder, exist_ok=True)
  good = {}
  with tarfile.open(os.path.join(folder, "00000.tar"), "w") as tar:
    for i in range(9):
      key, caption = f"{i:09d}", f"photo {i} of a tiny scene"
      if i < 4:
        data = _encoded(i)
        _add(tar, f"{key}.png", data)
        _add(tar, f"{key}.txt", caption.encode())
      elif i < 6:
        fmt, ext = ("JPEG", "jpg") if i == 4 else ("WEBP", "webp")
        data = _encoded(i, fmt)
        _add(tar, f"{key}.{ext}", data)
        _add(tar, f"{key}.json", json.dumps({"caption": caption, "url": "http://x"}).encode())
      elif i == 6:
        _add(tar, f"{key}.png", _encoded(i)[:40])
        _add(tar, f"{key}.txt", caption.encode())
      elif i == 7:
        _add(tar, f"{key}.png", _encoded(i))
        _add(tar, f"{key}.json", json.dumps({"url": "http://x"}).encode())
      else:
        _add(tar, f"{key}.txt", caption.encode())
      if i < 6:
        good[f"00000/{key}"] = (data, caption)
  with tarfile.open(os.path.join(folder, "00001.tar"), "w") as tar:
    for i in range(9, 15):
      key, caption, data = f"{i:09d}", f"photo {i} of a tiny scene", _encoded(i)
      _add(tar, f"{key}.png", data)
      _add(tar, f"{key}.txt", caption.encode())
      good[f"00001/{key}"] = (data, caption)
  return good


BAD = {"undecodable_image": ["00000/000000006"], "missing_caption": ["00000/000000007"],
       "missing_image": ["00000/000000008"]}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
  folder = str(tmp_path_factory.mktemp("wds"))
  return folder, _write_shards(folder)


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("bpe"))
  text.train_bpe([f"photo {i} of a tiny scene" for i in range(20)], 64, out)
  return out


def _read_back(source):
  """{id: (pixels, caption)} of every good example, and {reason: [ids]} of the bad ones."""
  got, bad = {}, {}
  for i in range(len(source)):
    try:
      example = source[i]
    except errors.BadExample as e:
      bad.setdefault(e.reason, []).append(e.example_id)
      assert e.example_id == source.example_id(i)
      continue
    assert example["id"] == source.example_id(i) and example["caption"] == source.caption(i)
    got[example["id"]] = (example["image"], example["caption"])
  return got, bad


def test_shard_patterns_braces_globs_and_folders(shards):
  folder, _ = shards
  both = [os.path.join(folder, "00000.tar"), os.path.join(folder, "00001.tar")]
  assert web_sources.expand_braces("a{08..10}{x,y}") == ["a08x", "a08y", "a09x", "a09y",
                                                         "a10x", "a10y"]
  assert web_sources.shard_paths(os.path.join(folder, "{00000..00001}.tar")) == both
  assert web_sources.shard_paths(os.path.join(folder, "0000?.tar")) == both
  assert web_sources.shard_paths(folder) == both
  with pytest.raises(errors.NotFound, match="00002.tar does not exist"):
    web_sources.shard_paths(os.path.join(folder, "{00000..00002}.tar"))


def test_tar_shards_read_back_pixels_captions_ids_and_name_the_bad(shards):
  folder, good = shards
  source = web_sources.TarShardSource(os.path.join(folder, "{00000..00001}.tar"), SIZE)
  assert len(source) == 15
  got, bad = _read_back(source)
  assert bad == BAD
  assert sorted(got) == sorted(good)
  for example_id, (data, caption) in good.items():
    pixels, got_caption = got[example_id]
    assert got_caption == caption and pixels.shape == (SIZE, SIZE, 3)
    np.testing.assert_array_equal(pixels, _want(data))
  # A lossless one equals the pixels written, resized and cropped.
  np.testing.assert_array_equal(got["00000/000000000"][0],
                                sources.resize_and_crop(Image.fromarray(_pixels(0)), SIZE))
  with pytest.raises(errors.BadExample, match=r"00000.tar: 000000006.png: not a readable image"):
    source[6]


def test_tar_shards_in_gs_read_like_local_ones(shards, bucket):  # pylint: disable=redefined-outer-name
  folder, _ = shards
  os.makedirs(bucket / "web")
  for name in ("00000.tar", "00001.tar"):
    with open(os.path.join(folder, name), "rb") as f:
      (bucket / "web" / name).write_bytes(f.read())
  local = web_sources.TarShardSource(folder, SIZE)
  remote = web_sources.TarShardSource("gs://bucket/web/{00000..00001}.tar", SIZE)
  local_got, local_bad = _read_back(local)
  remote_got, remote_bad = _read_back(remote)
  assert remote_bad == local_bad and sorted(remote_got) == sorted(local_got)
  for example_id, (pixels, caption) in local_got.items():
    assert remote_got[example_id][1] == caption
    np.testing.assert_array_equal(remote_got[example_id][0], pixels)


def _tokenize(*args):
  return subprocess.run([sys.executable, "-m", "upgen.cli", "tokenize", *args], cwd=ROOT,
                        capture_output=True, text=True, check=False)


def _check_records(out, good, bpe_dir, split="train"):
  """The records of `split` hold exactly the good examples: pixels, caption, text tokens."""
  tokenizer = text.load(bpe_dir)
  data = records.RecordDataSource(out, split)
  seen = set()
  for i in range(len(data)):
    features = example_proto.decode_example(data.read(i))
    example_id = features["id"][0].decode()
    want_image, caption = good[example_id]
    assert features["caption"][0].decode() == caption
    np.testing.assert_array_equal(features["text_tokens"],
                                  tokenizer.encode_batch([caption])[0])
    pixels = np.asarray(Image.open(io.BytesIO(features["image_png"][0])))
    np.testing.assert_array_equal(pixels, want_image)
    seen.add(example_id)
  assert seen == set(good)


def test_tokenize_wds_counts_the_bad_and_writes_the_good(shards, bpe, tmp_path):
  folder, good = shards
  out = str(tmp_path / "out")
  done = _tokenize("--source", f"wds:{folder}/{{00000..00001}}.tar", "--out", out,
                   "--text-tokenizer", bpe, "--pixels", "--image-size", str(SIZE),
                   "--val-fraction", "0", "--max-bad-fraction", "0.25", "--batch-size", "4")
  assert done.returncode == 0, done.stderr
  _check_records(out, {k: (_want(d), c) for k, (d, c) in good.items()}, bpe)
  skipped = records.read_metadata(out)["splits"]["train"]["skipped"]
  assert skipped == {reason: {"count": 1, "first": ids} for reason, ids in BAD.items()}
  assert "train: 12 paired records" in done.stdout
  assert "skipped 1 undecodable_image: 00000/000000006" in done.stdout


def test_tar_shards_are_parts_each_process_opens_only_its_own(shards, bpe, tmp_path):
  folder, good = shards
  broken = tmp_path / "broken"
  os.makedirs(broken)
  (broken / "00000.tar").write_bytes(b"not a tar" * 100)  # Process 0's shard.
  os.link(os.path.join(folder, "00001.tar"), broken / "00001.tar")
  split_sources = tokenize.resolve_sources(f"wds:{broken}", None, SIZE, val_fraction=0.3)
  assert set(split_sources) == {"train", "val"}
  job = tokenize._job(split_sources, str(tmp_path / "out"), text.load(bpe), None, None, 4,  # pylint: disable=protected-access
                      kind="paired", replace_metadata=True, progress=False, pixels=True,
                      max_bad_fraction=0.0, filters=tokenize_examples.Filters())
  assert [(u.split, u.name) for u in job.units] == [
      ("train", "train-00000-of-00002.tfrecord"), ("train", "train-00001-of-00002.tfrecord"),
      ("val", "val-00000-of-00002.tfrecord"), ("val", "val-00001-of-00002.tfrecord")]
  # Process 1 of 2 writes train's and val's shard of 00001.tar and never opens 00000.tar.
  summary = tokenize_job.run(job, process_index=1, process_count=2)
  assert summary["examples"] == 6 and summary["shards"] == 2
  with pytest.raises(errors.DataError, match="00000.tar: not a readable tar"):
    tokenize_job.run(job, process_index=0, process_count=2)
  # Val is held out by each example's id alone: those below 0.3, about 30%.
  staged = os.path.join(str(tmp_path / "out"), tokenize_job.STAGING_PREFIX + job.key)
  ids = {}
  for split in ("train", "val"):
    with open(os.path.join(staged, f"{split}-00001-of-00002.tfrecord.json")) as f:
      assert json.load(f)["seen"] == len(ids.setdefault(split, [
          k for k in good if k.startswith("00001/")
          and (sources.id_fraction(k) < 0.3) == (split == "val")]))
  assert ids["val"] and ids["train"]


def test_tokenize_stops_in_one_line_above_max_bad_fraction(shards, bpe, tmp_path):
  folder, _ = shards
  out = str(tmp_path / "out")
  done = _tokenize("--source", f"wds:{folder}", "--out", out, "--text-tokenizer", bpe,
                   "--pixels", "--image-size", str(SIZE), "--val-fraction", "0")
  assert done.returncode == 2
  lines = [line for line in done.stderr.strip().splitlines()  # Less the progress lines.
           if not line.startswith("tokenize")]
  assert len(lines) == 1, done.stderr
  assert "3 of 15 examples skipped" in lines[0] and "--max-bad-fraction 0.01" in lines[0]
  assert "missing_caption 1: 00000/000000007" in lines[0]
  assert not os.path.exists(os.path.join(out, records.METADATA_FILE))
  assert not [n for n in os.listdir(out) if n.endswith((".tfrecord", ".tmp"))]


def test_folders_stay_strict_by_default_and_count_when_asked(tmp_path):
  root = tmp_path / "raw"
  helpers._write_folder(root, helpers.PAIRS[:8])  # pylint: disable=protected-access
  (root / "images" / "003.png").write_bytes((root / "images" / "003.png").read_bytes()[:30])
  source = sources.ImageFolderSource(str(root), 8)
  tokenizers = (helpers.CharTokenizer(), helpers.PatchColorTokenizer())
  with pytest.raises(errors.DataError, match=r"captions.jsonl:4: .*003.png: not a readable"):
    tokenize.tokenize_split(source, str(tmp_path / "strict"), "train", *tokenizers)
  info = tokenize.tokenize_split(source, str(tmp_path / "counted"), "train", *tokenizers,
                                 max_bad_fraction=0.2)
  assert sum(info["records_per_shard"]) == 7
  assert info["skipped"] == {"undecodable_image": {"count": 1, "first": ["x3"]}}
  with pytest.raises(errors.DataError, match=r"1 of 8 examples skipped .*above "
                                             r"--max-bad-fraction 0.1;"):
    tokenize.tokenize_split(source, str(tmp_path / "over"), "train", *tokenizers,
                            max_bad_fraction=0.1)


def _datasets():
  if os.environ.get("UPGEN_REQUIRE_WEB"):  # .ci/run sets it: a missing extra is a failure.
    import datasets  # pylint: disable=g-import-not-at-top
    import pyarrow  # pylint: disable=g-import-not-at-top,unused-import
    return datasets
  pytest.importorskip("pyarrow")
  return pytest.importorskip("datasets")


@pytest.fixture(scope="module")
def hf_data(tmp_path_factory):
  """A datasets.Dataset of 8 rows (an Image feature, a caption, another column): rows 0-5
  good, 6 an undecodable image, 7 no caption; saved with save_to_disk, as a DatasetDict
  (train, validation) and as parquet in row groups of 3. Returns (root, {id: (bytes,
  caption)}) of the good rows, ids as the save_to_disk file names them."""
  datasets = _datasets()
  root = tmp_path_factory.mktemp("hf")
  images = [{"bytes": _encoded(i), "path": None} for i in range(6)]
  images += [{"bytes": _encoded(6)[:40], "path": None}, {"bytes": _encoded(7), "path": None}]
  captions = [f"photo {i} of a tiny scene" for i in range(7)] + [None]
  features = datasets.Features({"jpg": datasets.Image(), "text": datasets.Value("string"),
                                "n": datasets.Value("int32")})
  ds = datasets.Dataset.from_dict({"jpg": images, "text": captions, "n": list(range(8))},
                                  features=features)
  ds.save_to_disk(str(root / "disk"))
  datasets.DatasetDict({"train": ds, "validation": ds.select(range(2))}).save_to_disk(
      str(root / "dict"))
  os.makedirs(root / "parquet")
  ds.to_parquet(str(root / "parquet" / "part-0.parquet"), batch_size=3)
  good = {f"data-00000-of-00001.arrow/{i}": (images[i]["bytes"], captions[i]) for i in range(6)}
  return root, good


HF_BAD = {"undecodable_image": ["6"], "missing_caption": ["7"]}


def test_hf_save_to_disk_and_parquet_read_back_the_same(hf_data):
  root, good = hf_data
  disk = web_sources.HfSource(str(root / "disk"), SIZE, image_key="jpg", caption_key="text")
  parquet = web_sources.HfSource(str(root / "parquet"), SIZE, image_key="jpg", caption_key="text")
  assert len(disk) == len(parquet) == 8
  for source, file in ((disk, "data-00000-of-00001.arrow"), (parquet, "part-0.parquet")):
    got, bad = _read_back(source)
    assert bad == {reason: [f"{file}/{n}" for n in ids] for reason, ids in HF_BAD.items()}
    assert sorted(got) == sorted(k.replace("data-00000-of-00001.arrow", file) for k in good)
    for example_id, (data, caption) in good.items():
      pixels, got_caption = got[example_id.replace("data-00000-of-00001.arrow", file)]
      assert got_caption == caption
      np.testing.assert_array_equal(pixels, _want(data))
  with pytest.raises(errors.ConfigError, match=r"no column 'image' \(--image-key\); columns: "):
    web_sources.HfSource(str(root / "disk"), SIZE)


def test_tokenize_hf_splits_and_counts(hf_data, bpe, tmp_path):
  root, good = hf_data
  out = str(tmp_path / "out")
  done = _tokenize("--source", f"hf:{root / 'dict'}", "--splits", "train,val=validation",
                   "--out", out, "--text-tokenizer", bpe, "--pixels", "--image-size", str(SIZE),
                   "--image-key", "jpg", "--caption-key", "text", "--max-bad-fraction", "0.3")
  assert done.returncode == 0, done.stderr
  want = {k: (_want(d), c) for k, (d, c) in good.items()}
  _check_records(out, want, bpe)
  _check_records(out, {k: want[k] for k in list(want)[:2]}, bpe, split="val")
  meta = records.read_metadata(out)
  assert meta["splits"]["train"]["skipped"] == {
      reason: {"count": 1, "first": [f"data-00000-of-00001.arrow/{n}" for n in ids]}
      for reason, ids in HF_BAD.items()}
  assert "skipped" not in meta["splits"]["val"]
