"""Caption fidelity for the captioned shapes data set: does an image show what its caption says?

`parse_caption` reads the attributes a shapes caption states; `parse_image` finds the objects in
an image (pixels brighter than the background take the nearest palette color, 8-connected
components per color, tiny components dropped); `score` compares the two. An image passes only
if it holds exactly the stated number of objects and every stated attribute matches:
color, shape, size and position for one object; colors, shapes and the spatial relation for two.

Shape features are measured inside each component's bounding box, in coordinates normalised to
[-1, 1]: an apex-up triangle keeps only ~1/4 of its pixels in the upper half (circles and squares
~1/2), and only a square fills the corner regions |u| + |v| > 1.5 (a circle never reaches them).
Size is the side implied by the area for the detected shape; position is the bounding-box centre.

CLI: `upgen eval shapes --dir SPLIT_DIR` (captions.jsonl + images) or
`upgen eval shapes --manifest samples/manifest.jsonl` (keys "prompt" and "image", image paths
relative to the manifest's folder); `--out FILE.json` writes per-attribute accuracies.
"""
from __future__ import annotations

import itertools
import json
import os
import re
from typing import Iterable, Optional, Sequence

import numpy as np

from upgen import errors
from upgen.data import sources
from upgen.datasets.shapes import COLORS
from upgen.datasets.shapes import POSITION_PHRASES
from upgen.datasets.shapes import POSITIONS
from upgen.datasets.shapes import RELATIONS
from upgen.datasets.shapes import SHAPES
from upgen.datasets.shapes import SIZES
from upgen.evaluators import command

FOREGROUND_THRESHOLD = 128  # A pixel is an object pixel if its brightest channel reaches this.
MIN_AREA_FRACTION = 0.01  # Components smaller than this fraction of the canvas are noise.
# Triangles keep <= 1/3 of their pixels in the upper half of the bbox; circles, squares >= 0.42.
TRIANGLE_MAX_TOP_FRACTION = 0.375
# Squares fill their bbox corners (1.0); circles fill <= 1/3 of them, triangles <= 1/2.
SQUARE_MIN_CORNER_FILL = 0.66
SMALL_MAX_SIZE = 0.39  # Between small (<= 0.33 of the canvas) and large (>= 0.45).
MAX_ANCHOR_DISTANCE = 0.125  # Half the spacing of the position anchors (canvas fraction).
_MAX_CANDIDATES = 6  # Largest components considered when matching stated objects.
# Area of each shape relative to its side squared (circle: diameter).
_FILL = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5}
_PALETTE_Cx3 = np.array(list(COLORS.values()), np.float32)
_COLOR_NAMES = list(COLORS)
_OFFSETS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
_PHRASE_TO_POSITION = {phrase: pos for pos, phrase in POSITION_PHRASES.items()}
_PHRASE_TO_RELATION = {phrase: rel for rel, (phrase, _, _) in RELATIONS.items()}


def _alternatives(names: Iterable[str]) -> str:
  return "(" + "|".join(re.escape(name) for name in names) + ")"


_COLOR, _SHAPE = _alternatives(COLORS), _alternatives(SHAPES)
_ONE_RE = re.compile(
    rf"a {_alternatives(SIZES)} {_COLOR} {_SHAPE} {_alternatives(_PHRASE_TO_POSITION)}")
_TWO_RE = re.compile(
    rf"a {_COLOR} {_SHAPE} {_alternatives(_PHRASE_TO_RELATION)} a {_COLOR} {_SHAPE}")


def parse_caption(caption: str) -> list[dict]:
  """Attributes a shapes caption states, one dict per object.

  One object: [{"shape", "color", "size", "position"}]. Two objects: the first dict also has
  "relation" ("left of" or "above"), relating it to the second: [{"shape", "color",
  "relation"}, {"shape", "color"}]. Case, extra spaces and a final period are ignored.
  """
  text = " ".join(caption.lower().split()).rstrip(".")
  one = _ONE_RE.fullmatch(text)
  if one:
    size, color, shape, phrase = one.groups()
    return [{"shape": shape, "color": color, "size": size,
             "position": _PHRASE_TO_POSITION[phrase]}]
  two = _TWO_RE.fullmatch(text)
  if two:
    color1, shape1, phrase, color2, shape2 = two.groups()
    return [{"shape": shape1, "color": color1, "relation": _PHRASE_TO_RELATION[phrase]},
            {"shape": shape2, "color": color2}]
  raise errors.DataError(f"not a shapes caption: {caption!r}")


def label_components(class_HxW: np.ndarray) -> np.ndarray:
  """8-connected components of equal non-negative values (-1 is background).

  Returns int labels HxW: each pixel holds the smallest flat index in its component, -1 on
  background. Min-label propagation with pointer jumping, all in numpy.
  """
  h, w = class_HxW.shape
  foreground = class_HxW >= 0
  padded_class = np.pad(class_HxW, 1, constant_values=-1)
  same = [(padded_class[1 + dy:1 + dy + h, 1 + dx:1 + dx + w] == class_HxW) & foreground
          for dy, dx in _OFFSETS]
  sentinel = h * w
  labels = np.where(foreground, np.arange(h * w).reshape(h, w), sentinel)
  while True:
    padded = np.pad(labels, 1, constant_values=sentinel)
    new = labels
    for (dy, dx), same_color in zip(_OFFSETS, same):
      neighbour = padded[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
      new = np.where(same_color, np.minimum(new, neighbour), new)
    flat = np.append(new.ravel(), sentinel)
    for _ in range(4):  # Pointer jumping: a label points at a pixel of the same component.
      flat = flat[flat]
    new = flat[:-1].reshape(h, w)
    if np.array_equal(new, labels):
      return np.where(foreground, labels, -1)
    labels = new


def classify_shape(mask_HxW: np.ndarray) -> str:
  """circle / square / triangle from a component's pixels within its bounding box."""
  ys, xs = np.nonzero(mask_HxW)
  y0, y1, x0, x1 = ys.min(), ys.max(), xs.min(), xs.max()
  cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
  half_h, half_w = (y1 - y0 + 1) / 2, (x1 - x0 + 1) / 2
  v = (ys - cy) / half_h
  top_fraction = (np.sum(v < 0) + 0.5 * np.sum(v == 0)) / len(ys)
  if top_fraction <= TRIANGLE_MAX_TOP_FRACTION:
    return "triangle"
  grid_y, grid_x = np.mgrid[y0:y1 + 1, x0:x1 + 1]
  corners = np.abs((grid_x - cx) / half_w) + np.abs((grid_y - cy) / half_h) > 1.5
  box = mask_HxW[y0:y1 + 1, x0:x1 + 1]
  corner_fill = box[corners].mean() if corners.any() else 0.0
  return "square" if corner_fill >= SQUARE_MIN_CORNER_FILL else "circle"


def nearest_position(x: float, y: float) -> Optional[str]:
  """The position anchor within MAX_ANCHOR_DISTANCE of (x, y), or None."""
  name, (ax, ay) = min(POSITIONS.items(), key=lambda kv: (kv[1][0] - x) ** 2 + (kv[1][1] - y) ** 2)
  return name if np.hypot(ax - x, ay - y) <= MAX_ANCHOR_DISTANCE else None


def parse_image(image_HxWx3: np.ndarray) -> list[dict]:
  """Objects in an image, largest first: color, shape, size, position and measurements.

  Each dict: "color", "shape", "size" ("small"/"large"), "position" (anchor name or None),
  "x", "y" (bounding-box centre), "extent" (side implied by the area), "area" (all as
  fractions of the canvas) and "bbox" [x0, y0, x1, y1] in pixels (inclusive).
  """
  image = np.asarray(image_HxWx3)
  if image.ndim != 3 or image.shape[-1] != 3:
    raise errors.DataError(f"expected an HxWx3 image, got shape {image.shape}")
  h, w, _ = image.shape
  pixels_HxWx3 = image.astype(np.float32)
  distance_HxWxC = np.sum((pixels_HxWx3[:, :, None, :] - _PALETTE_Cx3) ** 2, axis=-1)
  class_HxW = np.where(image.max(axis=-1) >= FOREGROUND_THRESHOLD,
                       np.argmin(distance_HxWxC, axis=-1), -1)
  labels_HxW = label_components(class_HxW)
  ids, counts = np.unique(labels_HxW[labels_HxW >= 0], return_counts=True)
  min_area = max(3, MIN_AREA_FRACTION * h * w)
  objects = []
  for label, count in sorted(zip(ids, counts), key=lambda ic: (-ic[1], ic[0])):
    if count < min_area:
      break
    mask_HxW = labels_HxW == label
    ys, xs = np.nonzero(mask_HxW)
    shape = classify_shape(mask_HxW)
    area = count / (h * w)
    extent = float(np.sqrt(area / _FILL[shape]))
    x = (xs.min() + xs.max() + 1) / 2 / w
    y = (ys.min() + ys.max() + 1) / 2 / h
    objects.append({
        "color": _COLOR_NAMES[class_HxW.flat[label]], "shape": shape,
        "size": "small" if extent <= SMALL_MAX_SIZE else "large",
        "position": nearest_position(x, y), "x": float(x), "y": float(y),
        "extent": extent, "area": float(area),
        "bbox": [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())]})
  return objects


def _relation_holds(relation: str, first: dict, second: dict) -> bool:
  dx, dy = second["x"] - first["x"], second["y"] - first["y"]
  if relation == "left of":
    return dx > 0 and abs(dx) > abs(dy)
  return dy > 0 and abs(dy) > abs(dx)  # "above"


def _check(stated: Sequence[dict], found: Sequence[Optional[dict]]) -> dict[str, bool]:
  """Per-attribute verdicts for one assignment of found objects to the stated ones."""
  pairs = list(zip(stated, found))
  checks = {key: all(f is not None and f[key] == s[key] for s, f in pairs)
            for key in ("color", "shape")}
  if len(stated) == 1:
    for key in ("size", "position"):
      checks[key] = found[0] is not None and found[0][key] == stated[0][key]
  else:
    checks["relation"] = (None not in found[:2]
                          and _relation_holds(stated[0]["relation"], found[0], found[1]))
  return checks


def score(image_HxWx3: np.ndarray, caption: str) -> tuple[bool, dict]:
  """(ok, details): ok iff the image holds exactly the stated objects with every attribute.

  details: "count" and per-attribute booleans ("color", "shape", plus "size", "position" for
  one object or "relation" for two) under the best assignment of found to stated objects,
  "num_objects" (stated), "found" (the parse_image objects).
  """
  stated = parse_caption(caption)
  found = parse_image(image_HxWx3)
  candidates: list[Optional[dict]] = list(found[:_MAX_CANDIDATES])
  candidates += [None] * max(0, len(stated) - len(candidates))
  best = max((_check(stated, list(assignment))
              for assignment in itertools.permutations(candidates, len(stated))),
             key=lambda checks: sum(checks.values()))
  details = {"count": len(found) == len(stated), **best, "num_objects": len(stated),
             "found": found}
  ok = details["count"] and all(best.values())
  return bool(ok), details


def caption_fidelity(images: Iterable[np.ndarray], captions: Iterable[str]) -> float:
  """Fraction of (image, caption) pairs that `score` accepts."""
  verdicts = [score(image, caption)[0] for image, caption in zip(images, captions, strict=True)]
  if not verdicts:
    raise errors.DataError("caption_fidelity needs at least one image")
  return float(np.mean(verdicts))


def read_pairs(jsonl_path: str, caption_key: str) -> list[tuple[str, str]]:
  """(image path, caption) per line of a captions file or samples manifest (caption_key
  "prompt"); image paths relative to its folder."""
  return [(e["image"], e["caption"])
          for e in sources.read_captions(jsonl_path, caption_key=caption_key)]


def evaluate_pairs(pairs: Sequence[tuple[str, str]], source: str) -> dict:
  """Scores (image path, caption) pairs; returns fidelity and per-attribute accuracies."""
  if not pairs:
    raise errors.DataError(f"{source}: no examples to score")
  oks, per_attribute = [], {}
  for image_path, caption in pairs:
    try:
      ok, details = score(sources.load_image(image_path), caption)
    except ValueError as e:
      raise errors.DataError(f"{source}: {image_path}: {e}") from e
    oks.append(ok)
    kind = "one_object" if details["num_objects"] == 1 else "two_objects"
    for name, value in details.items():
      if isinstance(value, bool):
        per_attribute.setdefault(name, []).append(value)
        per_attribute.setdefault(f"{kind}/{name}", []).append(value)
    per_attribute.setdefault(f"{kind}/ok", []).append(ok)
  return {"source": source, "caption_fidelity": float(np.mean(oks)), "num_ok": int(sum(oks)),
          "num": len(oks),
          "attribute_accuracy": {k: float(np.mean(v)) for k, v in sorted(per_attribute.items())}}


def main(argv: Optional[list[str]] = None) -> int:
  """`upgen eval shapes`: caption fidelity of a split folder or a samples manifest."""
  parser = command.parser("shapes", __doc__)
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument("--dir", help="Split folder with captions.jsonl and images/.")
  source.add_argument("--manifest", help="Samples manifest.jsonl with 'prompt' and 'image'.")
  parser.add_argument("--out", help="Write fidelity and per-attribute accuracies to this JSON.")
  args = parser.parse_args(argv)
  if args.dir:
    path = sources.captions_path(args.dir)
    result = evaluate_pairs(read_pairs(path, "caption"), path)
  else:
    result = evaluate_pairs(read_pairs(args.manifest, "prompt"), args.manifest)
  print(f"caption fidelity: {result['caption_fidelity']:.3f} ({result['num_ok']}/{result['num']})")
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
      json.dump(result, f, indent=2)
      f.write("\n")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
