"""`upgen data folder`: real captioned image sets that ship offline, written as the image
folders the quickstart and `upgen tokenize` read (images/ + captions.jsonl).

  upgen data folder icons OUT [--theme /usr/share/icons/Adwaita] [--size 48]
  upgen data folder digits OUT [--csv PATH]

- icons: a freedesktop icon theme's PNGs at one size (Debian's adwaita-icon-theme: 994 at
  48 px, drawn by the GNOME designers), each captioned by its icon name ("folder-music" ->
  "folder music"; "-symbolic" names, the monochrome glyphs, keep the word "symbolic"),
  composited on white (the theme's icons are transparent around the glyph). Names in
  several contexts (actions/, legacy/, ...) are kept once each.
- digits: scikit-learn's handwritten digits (UCI, 1,797 images of 8x8 pixels at 17 grey
  levels, written by 43 people), scaled to 32 px by pixel replication, captioned "a
  handwritten K" with K the digit's name: ten captions in all. The CSV is read from the
  installed scikit-learn (`pip install scikit-learn`) or from --csv; scikit-learn itself is
  not imported.

Both folders are real, human-made sets with names for captions, for the fit report
(`upgen eval fit`) and the quickstart's --source.
"""
from __future__ import annotations

import argparse
import gzip
import importlib.util
import os
import sys
from typing import Optional

import numpy as np
from PIL import Image

from upgen import errors
from upgen.data import images
from upgen.data import sources

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight",
               "nine")
DIGITS_SIZE = 32  # Pixels of the written digit images (8x8 cells of 4x4 pixels).


def icon_caption(filename: str) -> str:
  """"folder-music.png" -> "folder music"; "go-up-symbolic.symbolic.png" -> "go up
  symbolic" (the theme's symbolic PNGs carry the suffix twice)."""
  name = filename[:-len(".png")] if filename.endswith(".png") else filename
  if name.endswith(".symbolic"):
    name = name[:-len(".symbolic")]
  return " ".join(w for w in name.replace("_", "-").split("-") if w)


def write_icons(theme: str, out: str, size: int = 48) -> int:
  """Writes the theme's PNG icons of `size` px to out/ (see the module docstring); returns
  how many."""
  root = os.path.join(theme, f"{size}x{size}")
  if not os.path.isdir(root):
    raise errors.NotFound(f"--theme {theme}: no {size}x{size}/ folder (is the icon theme "
                          "installed? Debian: apt-get install adwaita-icon-theme)")
  rows, seen = [], set()
  for context in sorted(os.listdir(root)):
    folder = os.path.join(root, context)
    for filename in sorted(os.listdir(folder)) if os.path.isdir(folder) else ():
      caption = icon_caption(filename)
      if not filename.endswith(".png") or caption in seen:
        continue
      pixels = images.load_image(os.path.join(folder, filename))  # On white.
      seen.add(caption)
      name = f"{len(rows):05d}.png"
      _save(pixels, out, name)
      rows.append({"image": os.path.join("images", name), "caption": caption,
                   "source": f"{context}/{filename}"})
  if not rows:
    raise errors.NotFound(f"{root}: no PNG icons")
  sources.write_captions(out, rows)
  return len(rows)


def sklearn_digits_csv() -> str:
  """The path of digits.csv.gz inside the installed scikit-learn (not imported)."""
  spec = importlib.util.find_spec("sklearn")
  path = (os.path.join(os.path.dirname(spec.origin), "datasets", "data", "digits.csv.gz")
          if spec is not None and spec.origin else "")
  if not os.path.exists(path):
    raise errors.NotFound("scikit-learn's digits.csv.gz: scikit-learn is not installed "
                          "(pip install scikit-learn), or pass --csv PATH")
  return path


def read_digits(path: str) -> tuple[np.ndarray, np.ndarray]:
  """(images_Nx8x8 uint8 in 0..16, labels_N) from scikit-learn's digits CSV (gzipped or
  not): 64 pixel values and the label per line."""
  opener = gzip.open if path.endswith(".gz") else open
  images, labels = [], []
  with opener(path, "rt") as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        values = [int(float(v)) for v in line.split(",")]
      except ValueError:
        raise errors.DataError(f"{path}:{n}: not comma-separated numbers") from None
      if len(values) != 65 or not all(0 <= v <= 16 for v in values[:64]) or not (
          0 <= values[64] <= 9):
        raise errors.DataError(f"{path}:{n}: expected 64 pixel values in 0..16 and a digit "
                               f"0..9, got {len(values)} values")
      images.append(values[:64])
      labels.append(values[64])
  if not images:
    raise errors.DataError(f"{path}: no digits")
  return np.asarray(images, np.uint8).reshape(-1, 8, 8), np.asarray(labels, np.int64)


def digit_pixels(image_8x8: np.ndarray) -> np.ndarray:
  """Dark ink on white, 32x32 RGB: each of the 8x8 cells a 4x4 block."""
  grey = 255 - np.round(image_8x8.astype(np.float32) * (255.0 / 16.0)).astype(np.uint8)
  big = np.kron(grey, np.ones((DIGITS_SIZE // 8, DIGITS_SIZE // 8), np.uint8))
  return np.repeat(big[..., None], 3, axis=-1)


def write_digits(csv: str, out: str) -> int:
  images, labels = read_digits(csv)
  rows = []
  for i, (image, label) in enumerate(zip(images, labels)):
    name = f"{i:05d}.png"
    _save(digit_pixels(image), out, name)
    rows.append({"image": os.path.join("images", name),
                 "caption": f"a handwritten {DIGIT_NAMES[label]}", "label": int(label)})
  sources.write_captions(out, rows)
  return len(rows)


def _save(pixels_HxWx3: np.ndarray, out: str, name: str) -> None:
  os.makedirs(os.path.join(out, "images"), exist_ok=True)
  Image.fromarray(pixels_HxWx3).save(os.path.join(out, "images", name))


def main(argv: Optional[list[str]] = None) -> int:
  parser = errors.ArgumentParser(prog="upgen data folder", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("set", choices=("icons", "digits"))
  parser.add_argument("out")
  parser.add_argument("--theme", default="/usr/share/icons/Adwaita", help="icons: the theme.")
  parser.add_argument("--size", type=errors.whole(1), default=48, help="icons: the theme's size folder.")
  parser.add_argument("--csv", default="", help="digits: the CSV (default: scikit-learn's).")
  args = parser.parse_args(argv)
  if os.path.exists(sources.captions_path(args.out)):
    raise errors.ConfigError(f"{args.out}: already holds {sources.CAPTIONS_FILE}; choose a new "
                             "folder")
  if args.set == "icons":
    n = write_icons(args.theme, args.out, args.size)
  else:
    n = write_digits(args.csv or sklearn_digits_csv(), args.out)
  print(f"{args.out}: {n} images with captions ({sources.CAPTIONS_FILE})")
  return 0


if __name__ == "__main__":
  sys.exit(main())
