"""`upgen data profile DIR`: what a folder of captioned images holds, measured before any
recipe is chosen for it: the images (how many, their sizes), the captions (words per
caption, distinct captions and how often each repeats, the vocabulary) and the colours (how
much of each image is background, how many colours, how saturated).

  upgen data profile DIR [--json] [--max-images 2000] [--image-size 32]

DIR holds captions.jsonl, or train/ and val/ subfolders with one each (the layout
`upgen data shapes` writes). Sizes are read from every image's header; colours from up to
--max-images images (a fixed sample), each resized and center-cropped to --image-size as the
tokenizers will see it.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
from typing import Any, Optional, Sequence

import numpy as np
from PIL import Image

from upgen import errors
from upgen.data import images
from upgen.data import sources
from upgen.tokenizers import text

# Colours closer than this (max over R, G, B) to an image's most common colour count as its
# background; colours are counted after quantizing each channel to 16 levels.
BACKGROUND_TOLERANCE = 24
COLOUR_LEVELS = 16


def folder_entries(path: str) -> dict[str, list[dict[str, Any]]]:
  """{split: captions.jsonl rows} of DIR (one split "all"), or of DIR/train, DIR/val, ..."""
  if os.path.exists(sources.captions_path(path)):
    return {"all": sources.read_captions(path)}
  splits = {name: sources.read_captions(os.path.join(path, name))
            for name in sorted(os.listdir(path)) if os.path.isdir(os.path.join(path, name))
            and os.path.exists(sources.captions_path(os.path.join(path, name)))}
  if not splits:
    raise errors.NotFound(f"{path}: no {sources.CAPTIONS_FILE}, here or in a subfolder "
                          "(train/, val/, ...)")
  return splits


def _spread(values: Sequence[float]) -> dict[str, float]:
  v = np.asarray(values, np.float64)
  return {"min": float(v.min()), "median": float(np.median(v)),
          "p95": float(np.percentile(v, 95)), "max": float(v.max()), "mean": float(v.mean())}


def caption_stats(captions: Sequence[str]) -> dict[str, Any]:
  per_caption = [text.caption_words(c) for c in captions]
  counts = collections.Counter(w for ws in per_caption for w in ws)
  repeats = collections.Counter(captions)
  # On how many images each caption's rarest word is: a word on few images names them.
  images_with = collections.Counter(w for ws in per_caption for w in set(ws))
  rarest = [min(images_with[w] for w in ws) if ws else 0 for ws in per_caption]
  return {
      "num": len(captions), "distinct": len(repeats),
      "images_per_caption": _spread(list(repeats.values())),
      "words_per_caption": _spread([len(ws) for ws in per_caption]),
      "characters_per_caption": _spread([len(c) for c in captions]),
      "rarest_word_images": _spread(rarest),
      "vocabulary": len(counts), "words_seen_once": sum(1 for n in counts.values() if n == 1),
      "most_common_words": [w for w, _ in counts.most_common(10)],
  }


def colour_stats(image_NxSxSx3: np.ndarray) -> dict[str, Any]:
  """Per image: the share of background pixels (within BACKGROUND_TOLERANCE of its most
  common quantized colour), distinct quantized colours, mean HSV saturation; then their
  spread over the images, and the mean RGB of all pixels."""
  x = np.asarray(image_NxSxSx3, np.int32)
  n = len(x)
  flat = x.reshape(n, -1, 3)
  q = flat * COLOUR_LEVELS // 256
  codes = (q[..., 0] * COLOUR_LEVELS + q[..., 1]) * COLOUR_LEVELS + q[..., 2]
  background, distinct = [], []
  for i in range(n):
    values, counts = np.unique(codes[i], return_counts=True)
    distinct.append(len(values))
    mode = values[np.argmax(counts)]
    ref = flat[i][codes[i] == mode].mean(axis=0)
    background.append(float(np.mean(np.abs(flat[i] - ref).max(axis=-1) <= BACKGROUND_TOLERANCE)))
  hi, lo = flat.max(axis=-1), flat.min(axis=-1)
  saturation = np.where(hi > 0, (hi - lo) / np.maximum(hi, 1), 0.0).mean(axis=1)
  return {"mean_rgb": [round(float(c), 1) for c in flat.reshape(-1, 3).mean(axis=0)],
          "background_fraction": _spread(background),
          "distinct_colours": _spread(distinct),
          "saturation": _spread(saturation.tolist()),
          "pixel_std": _spread(flat.std(axis=(1, 2)).tolist())}


def _pixels(row: dict[str, Any], image_size: int) -> np.ndarray:
  """A captions row's image, decoded (a truncated file fails here, not at its header)."""
  try:
    return sources.load_image(row["image"], image_size)
  except errors.UserError as e:  # It names the image; this adds the captions line.
    raise type(e)(f"{row['line']}: {e}") from None


def profile(path: str, *, max_images: int = 2000, image_size: int = 32, seed: int = 0
            ) -> dict[str, Any]:
  """The profile of a folder (see the module docstring) as a JSON-able dict."""
  splits = folder_entries(path)
  rows = [r for split in splits.values() for r in split]
  sizes = []
  for r in rows:
    try:
      with Image.open(r["image"]) as im:  # The header only: sizes as the pixels stand upright.
        sizes.append(images.upright_size(im))
    except (OSError, SyntaxError, Image.DecompressionBombError) as e:
      raise errors.DataError(f"{r['line']}: {r['image']}: not an image PIL can read ({e})"
                             ) from None
  w, h = np.asarray([s[0] for s in sizes]), np.asarray([s[1] for s in sizes])
  rng = np.random.default_rng(seed)
  picked = sorted(rng.permutation(len(rows))[:max_images])
  pixels = np.stack([_pixels(rows[i], image_size) for i in picked])
  return {
      "path": os.path.abspath(path),
      "splits": {k: len(v) for k, v in splits.items()},
      "images": {"num": len(rows), "width": _spread(w), "height": _spread(h),
                 "square_fraction": float(np.mean(w == h)),
                 "distinct_sizes": len(set(sizes)),
                 "smaller_side": _spread(np.minimum(w, h))},
      "captions": caption_stats([r["caption"] for r in rows]),
      "colours": {"images_measured": len(picked), "image_size": image_size,
                  **colour_stats(pixels)},
  }


def _fmt(s: dict[str, float], digits: int = 0) -> str:
  f = (lambda v: f"{v:.{digits}f}")
  return f"{f(s['min'])} / {f(s['median'])} / {f(s['p95'])} / {f(s['max'])}"


def describe(p: dict[str, Any]) -> str:
  """The profile as the lines `upgen data profile` prints."""
  im, cap, col = p["images"], p["captions"], p["colours"]
  splits = ", ".join(f"{k} {v}" for k, v in p["splits"].items())
  return "\n".join([
      f"{p['path']}: {im['num']} images ({splits})",
      f"image sizes (min / median / p95 / max): width {_fmt(im['width'])}, height "
      f"{_fmt(im['height'])}; {100 * im['square_fraction']:.0f}% square, "
      f"{im['distinct_sizes']} distinct sizes",
      f"captions: {cap['distinct']} distinct of {cap['num']} (images per caption: "
      f"{_fmt(cap['images_per_caption'])}), words per caption {_fmt(cap['words_per_caption'])}",
      f"vocabulary: {cap['vocabulary']} words, {cap['words_seen_once']} seen once; most "
      f"common: {' '.join(cap['most_common_words'])}; each caption's rarest word is on "
      f"{_fmt(cap['rarest_word_images'])} images",
      f"colours ({col['images_measured']} images at {col['image_size']} px): mean RGB "
      f"{col['mean_rgb']}, background share {_fmt(col['background_fraction'], 2)}, distinct "
      f"colours {_fmt(col['distinct_colours'])}, saturation {_fmt(col['saturation'], 2)}",
  ])


def main(argv: Optional[list[str]] = None) -> int:
  parser = errors.ArgumentParser(prog="upgen data profile", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("dir", help="Folder with captions.jsonl (or train/ and val/ with one).")
  parser.add_argument("--json", action="store_true", help="Print the profile as JSON.")
  parser.add_argument("--max-images", type=errors.whole(1), default=2000,
                      help="Images whose colours are measured (a fixed sample).")
  parser.add_argument("--image-size", type=errors.whole(1), default=32,
                      help="The size the colours are measured at (resize and center crop).")
  args = parser.parse_args(argv)
  p = profile(args.dir, max_images=args.max_images, image_size=args.image_size)
  print(json.dumps(p, indent=2) if args.json else describe(p))
  return 0


if __name__ == "__main__":
  sys.exit(main())
