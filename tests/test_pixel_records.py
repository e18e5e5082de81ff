"""Pixel records (`upgen tokenize --pixels`): each resized, center-cropped image stored as
PNG beside the caption ids (and the image tokens, where an image tokenizer is given), read
back exactly through the same shuffled, resumable grain pipeline (readers.PIXEL_RECORDS)."""
import json

import numpy as np
import pytest

from configs import upgen as upgen_config
from tests.test_tokenize import PAIRS, CharTokenizer, PatchColorTokenizer, _write_folder
from upgen import cli
from upgen import errors
from upgen.data import images
from upgen.data import readers
from upgen.data import records
from upgen.data import sources
from upgen.datasets import tokenize


def _config(out, batch=4):
  c = upgen_config.get_config("tiny")
  c.data.dir, c.data.batch_size, c.data.text_seq_len = out, batch, 20
  return c


def _source_images(folder):
  src = sources.ImageFolderSource(folder, 8)
  return {src[i]["caption"]: src[i]["image"] for i in range(len(src))}


def test_pixels_round_trip_with_and_without_an_image_tokenizer(tmp_path):
  folder = _write_folder(tmp_path / "raw" / "train", PAIRS)
  want = _source_images(folder)
  text = CharTokenizer()
  for name, image_tok in (("pixels_only", None), ("both", PatchColorTokenizer())):
    out = str(tmp_path / name)
    tokenize.tokenize_split(sources.ImageFolderSource(folder, 8), out, "train", text,
                            image_tok, num_shards=2, batch_size=5, pixels=True)
    meta = records.read_metadata(out)
    assert meta["pixels"] == {"image_size": 8, "format": "png"}
    assert meta["splits"]["train"]["kind"] == "paired"
    c = _config(out)
    spec = readers.PIXEL_RECORDS.spec(c.data)
    assert spec.image_size == 8 and spec.image_seq_len == (0 if image_tok is None else 4)
    it = readers.PIXEL_RECORDS.eval_iterator(c, spec, "train", None)
    seen = 0
    for batch in it:
      assert batch["pixels"].shape == (4, 8, 8, 3) and batch["pixels"].dtype == np.uint8
      assert batch["image_tokens"].shape == (4, spec.image_seq_len)
      for row in range(4):
        ids = batch["text_tokens"][row][batch["text_mask"][row]]
        caption = "".join(CharTokenizer.ALPHABET[i - 4] for i in ids if i >= 4)
        np.testing.assert_array_equal(batch["pixels"][row], want[caption])
        seen += 1
    assert seen == len(PAIRS)
    # The token reader does not decode pixels; the pixel reader's train iterator resumes.
    assert "pixels" not in next(readers.TOKEN_RECORDS.eval_iterator(c, spec, "train", None))
    train = readers.PIXEL_RECORDS.train_iterator(c, spec, None)
    next(train)
    state = train.get_state()
    first = next(train)["pixels"]
    train.set_state(state)
    np.testing.assert_array_equal(next(train)["pixels"], first)


def test_pixel_record_problems_name_the_file(tmp_path, capsys):
  folder = _write_folder(tmp_path / "raw" / "train", PAIRS[:8])
  out = str(tmp_path / "tokens_only")
  tokenize.tokenize_split(sources.ImageFolderSource(folder, 8), out, "train", CharTokenizer(),
                          PatchColorTokenizer(), num_shards=1)
  with pytest.raises(errors.DataError, match="carry no pixels.*--pixels"):
    readers.PIXEL_RECORDS.spec(_config(out).data)
  # A split with pixels cannot join records without them.
  with pytest.raises(records.MetadataError, match="'pixels' differs"):
    tokenize.tokenize_split(sources.ImageFolderSource(folder, 8), out, "val", CharTokenizer(),
                            PatchColorTokenizer(), num_shards=1, pixels=True)
  # A record whose PNG is broken, or of another size, is named with its shard and index.
  bad = str(tmp_path / "bad")
  good_png = images.png_bytes(np.zeros((8, 8, 3), np.uint8))
  for png, match in ((b"not a png", "image_png is not a readable PNG"),
                     (images.png_bytes(np.zeros((4, 4, 3), np.uint8)), "image_png is 4x4.*says 8")):
    examples = [{"text_tokens": [5, 6], "image_png": good_png if i != 5 else png,
                 "caption": "x", "id": str(i)} for i in range(8)]
    info = records.write_split(bad, "train", iter(examples), 1)
    records.update_metadata(bad, "train", info, records.text_tokenizer_info(CharTokenizer()),
                            None, replace=True, pixels={"image_size": 8, "format": "png"})
    c = _config(bad, batch=8)
    spec = readers.PIXEL_RECORDS.spec(c.data)
    with pytest.raises(errors.DataError, match=f"train-00000-of-00001.tfrecord: record 5: {match}"):
      next(readers.PIXEL_RECORDS.eval_iterator(c, spec, "train", None))
  # The command line: --pixels without an image tokenizer needs a size.
  capsys.readouterr()
  assert cli.main(["tokenize", "--source", str(tmp_path / "raw"), "--out", str(tmp_path / "cli"),
                   "--text-tokenizer", "x", "--pixels", "--kind", "image"]) == 2
  assert capsys.readouterr().err.splitlines() == [
      "upgen tokenize: error: --pixels without --image-tokenizer needs --image-size"]
  metadata = json.loads((tmp_path / "tokens_only" / "metadata.json").read_text())
  assert "pixels" not in metadata  # Token-only records are written as before.
