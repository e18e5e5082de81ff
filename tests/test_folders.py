"""upgen data folder: icon themes and scikit-learn's digits written as captioned folders."""
import gzip
import os

import numpy as np
import pytest
from PIL import Image

from upgen import errors
from upgen.datasets import folders
from upgen.datasets import profile
from upgen.data import sources


def _icon(path, rgba):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(np.asarray(rgba, np.uint8)).save(path)


def test_icons_are_captioned_by_name_on_white_once_per_name(tmp_path):
  theme = tmp_path / "Theme"
  red = np.zeros((48, 48, 4), np.uint8)
  red[8:40, 8:40] = (200, 10, 10, 255)  # An opaque square; a transparent border.
  red[0, 0] = (0, 0, 0, 128)  # Half-transparent black over white: grey.
  _icon(str(theme / "48x48/actions/go-up-symbolic.symbolic.png"), red)
  _icon(str(theme / "48x48/legacy/folder-music.png"), red)
  _icon(str(theme / "48x48/places/folder-music.png"), red[::-1])  # The same name again.
  _icon(str(theme / "16x16/places/user-home.png"), red[:16, :16])  # Another size.
  out = tmp_path / "icons"
  assert folders.main(["icons", str(out), "--theme", str(theme)]) == 0
  rows = sources.read_captions(str(out))
  assert [r["caption"] for r in rows] == ["go up symbolic", "folder music"]
  assert rows[1]["record"]["source"] == "legacy/folder-music.png"  # The first one kept.
  pixels = sources.load_image(rows[0]["image"])
  assert pixels.shape == (48, 48, 3)
  assert tuple(pixels[20, 20]) == (200, 10, 10)
  assert tuple(pixels[47, 47]) == (255, 255, 255)  # Transparent -> white, not black.
  assert tuple(pixels[0, 0]) == (127, 127, 127)
  assert profile.profile(str(out))["captions"]["distinct"] == 2  # A folder profile reads.
  with pytest.raises(errors.ConfigError, match="already holds captions.jsonl"):
    folders.main(["icons", str(out), "--theme", str(theme)])
  with pytest.raises(errors.NotFound, match="no 32x32/ folder"):
    folders.write_icons(str(theme), str(tmp_path / "other"), size=32)


def test_digits_from_the_csv_are_ten_captions_of_dark_ink(tmp_path):
  rng = np.random.default_rng(0)
  cells = rng.integers(0, 17, (12, 64))
  labels = np.arange(12) % 10
  csv = tmp_path / "digits.csv.gz"
  with gzip.open(csv, "wt") as f:
    for c, y in zip(cells, labels):
      f.write(",".join(str(float(v)) for v in [*c, y]) + "\n")  # sklearn writes floats.
  out = tmp_path / "digits"
  assert folders.main(["digits", str(out), "--csv", str(csv)]) == 0
  rows = sources.read_captions(str(out))
  assert [r["caption"] for r in rows[:3]] == ["a handwritten zero", "a handwritten one",
                                              "a handwritten two"]
  assert [r["record"]["label"] for r in rows] == labels.tolist()
  pixels = sources.load_image(rows[5]["image"])
  assert pixels.shape == (32, 32, 3)
  cell = cells[5].reshape(8, 8)
  assert pixels[4 * 3 + 2, 4 * 6 + 1, 0] == 255 - round(cell[3, 6] * 255 / 16)  # Replicated.
  assert (pixels[..., 0] == pixels[..., 2]).all()  # Grey.
  (tmp_path / "bad.csv").write_text("1,2,3\n")
  with pytest.raises(errors.DataError, match=r"bad.csv:1: expected 64 pixel values"):
    folders.read_digits(str(tmp_path / "bad.csv"))
