"""A TFDS image-caption data set as a source for `upgen tokenize` (the optional tfds extra).

Runs where tensorflow-datasets is installed (`.ci/run` installs requirements-tfds-lock.txt
after the main suite has passed without it); skipped elsewhere. The data set is built here
by a local GeneratorBasedBuilder: nothing is downloaded.
"""
import json
import os

import numpy as np
import pytest
from PIL import Image

from tests import test_tokenize as helpers
from upgen.data import records
from upgen.data import sources
from upgen.datasets import tokenize

if os.environ.get("UPGEN_REQUIRE_TFDS"):  # .ci/run sets it: a missing extra is a failure there.
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
else:
  tfds = pytest.importorskip("tensorflow_datasets")

NAMES = list(helpers.COLORS)


def _pixels(a: str, b: str) -> np.ndarray:
  """16x16 image: left half colour a, right half colour b (resized to 8x8 by the source)."""
  pixels = np.zeros((16, 16, 3), np.uint8)
  pixels[:, :8], pixels[:, 8:] = helpers.COLORS[a], helpers.COLORS[b]
  return pixels


class UpgenTinyCaptions(tfds.core.GeneratorBasedBuilder):
  """COCO-like layout: an image and a sequence of captions per example."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(None, None, 3)),
        "captions": tfds.features.Sequence({"text": tfds.features.Text()}),
    }))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples(range(12)),
            "validation": self._generate_examples(range(12, 16))}

  def _generate_examples(self, indices):
    for i in indices:
      a, b = NAMES[i % 4], NAMES[(i // 4) % 4]
      yield i, {"image": _pixels(a, b),
                "captions": {"text": [f"{a} and {b}", f"caption {i} number two"]}}


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("tfds")
  UpgenTinyCaptions(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
  return str(data_dir)


def test_tfds_source_reads_images_and_nested_captions(tfds_dir):
  src = sources.TfdsSource("upgen_tiny_captions", "validation", image_key="image",
                           caption_key="captions/text", image_size=8, data_dir=tfds_dir)
  assert len(src) == 4
  by_caption = {src[i]["caption"]: src[i] for i in range(len(src))}
  assert [src.caption(i) for i in range(len(src))] == [src[i]["caption"] for i in range(len(src))]
  assert set(by_caption) == {f"{NAMES[i % 4]} and {NAMES[(i // 4) % 4]}" for i in range(12, 16)}
  for caption, example in by_caption.items():
    a, b = caption.split(" and ")
    assert example["image"].shape == (8, 8, 3)
    want = sources.resize_and_crop(Image.fromarray(_pixels(a, b)), 8)
    np.testing.assert_array_equal(example["image"], want)
    np.testing.assert_array_equal(want[:, 0], np.broadcast_to(helpers.COLORS[a], (8, 3)))
  with pytest.raises(KeyError, match="tfds:upgen_tiny_captions: example has no key 'caption'"):
    sources.TfdsSource("upgen_tiny_captions", "train", image_size=8, data_dir=tfds_dir).caption(0)


def test_tokenize_from_tfds_matches_the_pixels(tmp_path, tfds_dir):
  """tfds:NAME through resolve_sources + tokenize_folder, as `upgen tokenize` runs it,
  renaming the TFDS split "validation" to the records' "val"."""
  text_tok, image_tok = helpers.CharTokenizer(), helpers.PatchColorTokenizer()
  split_sources = tokenize.resolve_sources(
      "tfds:upgen_tiny_captions", [("train", "train"), ("val", "validation")], 8,
      tfds_keys=("image", "captions/text"), tfds_data_dir=tfds_dir)
  out = str(tmp_path / "records")
  meta = tokenize.tokenize_folder(split_sources, out, text_tok, image_tok, num_shards=2)
  assert [sum(meta["splits"][s]["records_per_shard"]) for s in ("train", "val")] == [12, 4]
  with open(tmp_path / "records" / records.METADATA_FILE) as f:
    assert json.load(f)["splits"]["val"]["kind"] == "paired"
  seen = 0
  for split in ("train", "val"):
    decoded = records.RecordDataSource(out, split)
    for example in (decoded[i] for i in range(len(decoded))):
      a, b = example["caption"].split(" and ")
      grid = example["image_tokens"].reshape(2, 2)
      np.testing.assert_array_equal(grid[:, 0], helpers._color_id(a))
      np.testing.assert_array_equal(grid[:, 1], helpers._color_id(b))
      np.testing.assert_array_equal(example["text_tokens"], text_tok.encode_batch([example["caption"]])[0])
      seen += 1
  assert seen == 16
