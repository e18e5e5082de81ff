"""`upgen data profile`: sizes, captions and colours of a folder, on images made here."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from upgen import errors
from upgen.datasets import profile
from upgen.data import sources

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RED, BLACK, WHITE = (255, 0, 0), (0, 0, 0), (255, 255, 255)


def _image(path, size, left, right):
  """size=(w, h): the left half one colour, the right half another."""
  w, h = size
  pixels = np.zeros((h, w, 3), np.uint8)
  pixels[:, :w // 2], pixels[:, w // 2:] = left, right
  Image.fromarray(pixels).save(path)


@pytest.fixture
def folder(tmp_path):
  (tmp_path / "images").mkdir()
  rows = [("a.png", (32, 32), BLACK, RED, "a red square."),
          ("b.png", (64, 32), WHITE, WHITE, "a white wall"),
          ("c.png", (32, 48), BLACK, BLACK, "a red square."),
          ("d.png", (32, 32), BLACK, RED, "night, with a small red moon")]
  for name, size, left, right, _ in rows:
    _image(tmp_path / "images" / name, size, left, right)
  sources.write_captions(str(tmp_path), [{"image": f"images/{r[0]}", "caption": r[4]}
                                         for r in rows])
  return tmp_path


def test_profile_counts_sizes_captions_and_colours(folder):
  p = profile.profile(str(folder), image_size=32)  # The square images: not resampled.
  assert p["splits"] == {"all": 4}
  im = p["images"]
  assert im["num"] == 4 and im["square_fraction"] == 0.5 and im["distinct_sizes"] == 3
  assert im["width"]["max"] == 64 and im["height"]["max"] == 48 and im["smaller_side"]["min"] == 32
  cap = p["captions"]
  assert cap["num"] == 4 and cap["distinct"] == 3
  assert cap["images_per_caption"]["max"] == 2
  assert cap["words_per_caption"]["min"] == 3 and cap["words_per_caption"]["max"] == 6
  # Words as the tokenizer's vocabulary check splits them: "square." is "square".
  assert cap["vocabulary"] == len({"a", "red", "square", "white", "wall", "night", "with",
                                   "small", "moon"})
  assert cap["words_seen_once"] == 6 and cap["most_common_words"][:2] == ["a", "red"]
  # Rarest words: "square" (2 images), "white" (1), "square" (2), "night" (1).
  assert cap["rarest_word_images"]["min"] == 1 and cap["rarest_word_images"]["max"] == 2
  assert cap["rarest_word_images"]["median"] == 1.5
  col = p["colours"]
  assert col["images_measured"] == 4 and col["image_size"] == 32
  # Half black, half red: the background (the first of two equal modes) is half of it.
  assert col["background_fraction"]["min"] == 0.5 and col["background_fraction"]["max"] == 1.0
  assert col["distinct_colours"]["max"] >= 2 and col["distinct_colours"]["min"] == 1
  # Saturation: red 1, black and white 0 -> 0.5 for the half-red images, 0 for the rest.
  assert col["saturation"]["max"] == 0.5
  assert col["saturation"]["min"] == 0.0


def test_profile_reads_split_folders_and_names_bad_images(folder, tmp_path_factory):
  root = tmp_path_factory.mktemp("splits")
  for split in ("train", "val"):
    (root / split).mkdir()
    os.symlink(folder / "images", root / split / "images")
    sources.write_captions(str(root / split), [{"image": "images/a.png", "caption": "x y"}])
  assert profile.profile(str(root))["splits"] == {"train": 1, "val": 1}
  (folder / "images" / "b.png").write_bytes(b"not a png")
  with pytest.raises(errors.DataError, match=r"captions.jsonl:2: .*/images/b.png: not an "
                     "image PIL can read"):
    profile.profile(str(folder))
  with pytest.raises(errors.NotFound, match="no captions.jsonl"):
    profile.profile(str(tmp_path_factory.mktemp("empty")))


def test_profile_command_prints_and_writes_json(folder):
  run = lambda *a: subprocess.run([sys.executable, "-m", "upgen.cli", "data", "profile",
                                   str(folder), *a], cwd=ROOT, capture_output=True, text=True,
                                  check=True).stdout
  text = run()
  assert text.splitlines()[0].endswith(": 4 images (all 4)")
  assert "captions: 3 distinct of 4" in text and "vocabulary: 9 words, 6 seen once" in text
  assert json.loads(run("--json"))["captions"]["distinct"] == 3
