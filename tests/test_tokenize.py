"""`upgen tokenize`: folder of images + captions -> records, with small real tokenizers."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from configs import upgen as upgen_config
from upgen.data import pipeline
from upgen.data import records
from upgen.data import sources
from upgen.datasets import tokenize
from upgen.datasets import tokenize_job

COLORS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "white": (255, 255, 255)}


class CharTokenizer:
  """[PAD]=0 [MASK]=1 [BOS]=2 [EOS]=3, then one id per character of ALPHABET."""
  ALPHABET = "abcdefghijklmnopqrstuvwxyz "
  vocab_size, pad_id, mask_id, bos_id, eos_id = 4 + len(ALPHABET), 0, 1, 2, 3
  path = "chars:v1"

  def encode_batch(self, texts):
    return [[self.bos_id] + [4 + self.ALPHABET.index(c) for c in t.lower() if c in self.ALPHABET]
            + [self.eos_id] for t in texts]

  def identity(self):
    return {"kind": "chars", "alphabet": self.ALPHABET}


class PatchColorTokenizer:
  """8x8 images -> 2x2 grid: each 4x4 patch's mean colour, channels thresholded at 128,
  id = 4 r + 2 g + b."""
  codebook_size, grid, image_size, path = 8, (2, 2), 8, "patch-color:v1"

  def encode(self, images_BxHxWx3):
    b = len(images_BxHxWx3)
    means_Bx2x2x3 = images_BxHxWx3.reshape(b, 2, 4, 2, 4, 3).mean(axis=(2, 4))
    bits_Bx2x2x3 = (means_Bx2x2x3 >= 128).astype(np.int32)
    return bits_Bx2x2x3 @ np.array([4, 2, 1], np.int32)

  def identity(self):
    return {"kind": "patch-color", "threshold": 128}


def _write_folder(root, names):
  """Image i: left half COLORS[a], right half COLORS[b]; caption "a and b"."""
  os.makedirs(root / "images", exist_ok=True)
  lines = []
  for i, (a, b) in enumerate(names):
    pixels = np.zeros((8, 8, 3), np.uint8)
    pixels[:, :4], pixels[:, 4:] = COLORS[a], COLORS[b]
    Image.fromarray(pixels).save(root / "images" / f"{i:03d}.png")
    lines.append(json.dumps({"image": f"images/{i:03d}.png", "caption": f"{a} and {b}",
                             "id": f"x{i}"}))
  (root / "captions.jsonl").write_text("\n".join(lines) + "\n")
  return str(root)


def _color_id(name):
  r, g, b = (c >= 128 for c in COLORS[name])
  return 4 * r + 2 * g + b


PAIRS = [(a, b) for a in COLORS for b in COLORS]  # 16 examples.


def test_tokenize_split_writes_decodable_records(tmp_path):
  src = sources.ImageFolderSource(_write_folder(tmp_path / "raw" / "train", PAIRS), 8)
  out = str(tmp_path / "out")
  text, image = CharTokenizer(), PatchColorTokenizer()
  info = tokenize.tokenize_split(src, out, "train", text, image, num_shards=2, batch_size=5)
  assert info["records_per_shard"] == [8, 8] and info["kind"] == "paired"
  meta = records.read_metadata(out)
  assert meta["image_tokenizer"]["grid"] == [2, 2] and meta["image_tokenizer"]["codebook_size"] == 8
  assert meta["text_tokenizer"]["identity"] == text.identity()
  assert meta["splits"]["train"]["max_text_len"] == max(len(f"{a} and {b}") + 2 for a, b in PAIRS)
  decoded = records.RecordDataSource(out, "train")
  by_id = {decoded[i]["id"]: decoded[i] for i in range(len(decoded))}
  for i, (a, b) in enumerate(PAIRS):
    rec = by_id[f"x{i}"]
    assert rec["image_tokens"].tolist() == [_color_id(a), _color_id(b)] * 2
    assert rec["text_tokens"].tolist() == text.encode_batch([f"{a} and {b}"])[0]
    assert rec["caption"] == f"{a} and {b}"
  # The records feed the training pipeline with the sizes read from the metadata.
  c = upgen_config.get_config("tiny")
  c.data.dir, c.data.batch_size, c.data.text_seq_len = out, 4, 8
  spec = pipeline.token_spec(c.data)
  assert (spec.image_vocab_size, spec.image_seq_len, spec.text_vocab_size) == (8, 4, 31)
  batch = next(pipeline.make_train_iterator(c, spec))
  assert batch["image_tokens"].shape == (4, 4) and batch["text_tokens"][:, 0].tolist() == [2] * 4


def test_text_only_and_image_only_kinds(tmp_path):
  folder = _write_folder(tmp_path / "raw", PAIRS[:6])
  out = str(tmp_path / "out")
  info = tokenize.tokenize_split(sources.CaptionsSource(folder), out, "train", CharTokenizer(),
                                 None, kind="text")
  assert info["kind"] == "text"
  meta = records.read_metadata(out)
  assert meta["image_tokenizer"] is None
  rec = records.RecordDataSource(out, "train")[0]
  assert len(rec["image_tokens"]) == 0 and rec["text_tokens"][0] == 2
  out_img = str(tmp_path / "img")
  tokenize.tokenize_split(sources.ImageFolderSource(folder, 8), out_img, "train", None,
                          PatchColorTokenizer(), kind="image")
  rec = records.RecordDataSource(out_img, "train")[0]
  assert len(rec["text_tokens"]) == 0 and len(rec["image_tokens"]) == 4


def test_tokenizer_problems_are_reported(tmp_path):
  folder = _write_folder(tmp_path / "raw", PAIRS[:3])
  with pytest.raises(ValueError, match="yields 16px images but the image tokenizer .* expects 8px"):
    tokenize.tokenize_split(sources.ImageFolderSource(folder, 16), str(tmp_path / "o"), "train",
                            CharTokenizer(), PatchColorTokenizer())

  class TooSmallCodebook(PatchColorTokenizer):
    codebook_size = 4
  want = r"image tokenizer returned id [4-7] outside \[0, 4\) for example 'x"
  with pytest.raises(ValueError, match=want):
    tokenize.tokenize_split(sources.ImageFolderSource(folder, 8), str(tmp_path / "o"), "train",
                            CharTokenizer(), TooSmallCodebook())


def test_resolve_sources_split_folders_and_holdout(tmp_path):
  split_root = tmp_path / "splits"
  _write_folder(split_root / "train", PAIRS[:5])
  _write_folder(split_root / "val", PAIRS[5:7])
  found = tokenize.resolve_sources(str(split_root), None, 8)
  assert {k: len(v) for k, v in found.items()} == {"train": 5, "val": 2}
  with pytest.raises(FileNotFoundError, match=r"no captions\.jsonl for split\(s\) \['test'\]"):
    tokenize.resolve_sources(str(split_root), [("train", "train"), ("test", "test")], 8, 0.05)
  flat = _write_folder(tmp_path / "flat", PAIRS)
  first = tokenize.resolve_sources(flat, None, 8, 0.25)
  again = tokenize.resolve_sources(flat, None, 8, 0.25)
  assert len(first["train"]) == 12 and len(first["val"]) == 4
  val_ids = [first["val"].example_id(i) for i in range(4)]
  assert val_ids == [again["val"].example_id(i) for i in range(4)]
  train_ids = {first["train"].example_id(i) for i in range(12)}
  assert not train_ids & set(val_ids) and len(train_ids | set(val_ids)) == 16
  with pytest.raises(ValueError, match="only train and val"):
    tokenize.resolve_sources(flat, [("test", "test")], 8, 0.25)
  # `upgen quickstart --source` holds out the same examples (one splitter), as split folders
  # of captions files that point at the original images.
  from upgen.tools import quickstart
  split = quickstart.prepare_source(flat, str(tmp_path / "prepared"), 0.25, seed=0)
  held = [sources.ImageFolderSource(os.path.join(split, s), 8) for s in ("train", "val")]
  assert [held[1].example_id(i) for i in range(4)] == val_ids
  assert {held[0].example_id(i) for i in range(12)} == train_ids
  np.testing.assert_array_equal(held[1][0]["image"], first["val"][0]["image"])


def test_retokenizing_with_other_tokenizers(tmp_path):
  folder = _write_folder(tmp_path / "raw", PAIRS[:4])
  out = str(tmp_path / "out")
  src = sources.ImageFolderSource(folder, 8)
  tokenize.tokenize_folder({"train": src, "val": src}, out, CharTokenizer(), PatchColorTokenizer())
  before = records.read_metadata(out)

  class Brighter(PatchColorTokenizer):
    def identity(self):
      return {"kind": "patch-color", "threshold": 64}
  with pytest.raises(records.MetadataError, match=r"metadata\.json: key 'image_tokenizer' differs"):
    tokenize.tokenize_split(src, out, "train", CharTokenizer(), Brighter())
  assert records.read_metadata(out) == before  # Nothing was written.
  assert len(records.RecordDataSource(out, "train")) == 4
  meta = tokenize.tokenize_folder({"train": src}, out, CharTokenizer(), Brighter())
  assert list(meta["splits"]) == ["train"]
  assert meta["image_tokenizer"]["identity"]["threshold"] == 64
  assert sorted(os.listdir(out)) == ["metadata.json", "train-00000-of-00001.tfrecord"]


def test_a_failed_retokenize_keeps_the_records_it_was_replacing(tmp_path):
  folder = _write_folder(tmp_path / "raw", PAIRS[:6])
  out = str(tmp_path / "out")
  src = sources.ImageFolderSource(folder, 8)
  tokenize.tokenize_folder({"train": src, "val": src}, out, CharTokenizer(), PatchColorTokenizer())
  before, files = records.read_metadata(out), sorted(os.listdir(out))

  class Brighter(PatchColorTokenizer):  # Other tokenizers: the old splits are to be replaced.
    def identity(self):
      return {"kind": "patch-color", "threshold": 64}

  image = tmp_path / "raw" / "images" / "004.png"
  good = image.read_bytes()
  image.write_bytes(good[:40])  # Truncated: the re-tokenize fails partway through train.
  with pytest.raises(Exception, match="004.png"):
    tokenize.tokenize_folder({"train": src, "val": src}, out, CharTokenizer(), Brighter(),
                             num_shards=3)
  # Nothing of the old records went: the same files, the same metadata, all readable; the
  # failed job's shards wait in its staging folder for a resume.
  staging = [n for n in os.listdir(out) if n.startswith(tokenize_job.STAGING_PREFIX)]
  assert records.read_metadata(out) == before and len(staging) == 1
  assert sorted(set(os.listdir(out)) - set(staging)) == files
  assert [len(records.RecordDataSource(out, s)) for s in ("train", "val")] == [6, 6]
  # Once it succeeds, the new shards replace the old ones and nothing stale stays.
  image.write_bytes(good)
  meta = tokenize.tokenize_folder({"train": src}, out, CharTokenizer(), Brighter(), num_shards=3)
  assert sorted(os.listdir(out)) == ["metadata.json"] + meta["splits"]["train"]["shards"]
  assert len(meta["splits"]["train"]["shards"]) == 3
  assert len(records.RecordDataSource(out, "train")) == 6
