"""The built-in "captioned shapes" data set: rendered images of colored shapes with captions.

Every image has a black background and one or two filled, aliased (no anti-aliasing) shapes.
Half the examples show one object and say its size, color, shape and position
("a small red circle on the left"); the other half show two objects and say how they relate
("a blue square to the left of a yellow triangle", "a red circle above a red square").
A fixed 20% of the two-object captions (a permutation of the sorted caption list seeded by
`seed`) never occur in train or val; the test split holds only those, so test fidelity
measures compositional generalization.

Layout written by `generate` (the same layout a user's own image folder uses):

  out_dir/shapes.json                 generation arguments and the held-out captions
  out_dir/<split>/captions.jsonl      one line per example:
      {"image": "images/000000.png", "caption": ..., "objects": [{"shape", "color", "x", "y",
       "size"}, ...], "labels": {"shape", "color", "size", "position"}}
  ("labels": the named attributes of single-object examples, as class labels for
  `upgen eval probe --label shape`; absent on two-object examples)
  out_dir/<split>/images/000000.png   RGB PNG, image_size x image_size

for split in train, val, test. Same arguments => byte-identical files.

CLI: `upgen data shapes --out DIR [--image-size 32 --num-train 20000 --num-val 1000
--num-test 1000 --seed 0]`.
"""
from __future__ import annotations

import json
import os
from typing import Optional, Sequence

import numpy as np

from upgen import errors
from upgen.data.images import png_bytes

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "magenta": (255, 0, 255),
    "cyan": (0, 255, 255),
}
SHAPES = ("circle", "square", "triangle")
# Side (or diameter) of an object as a fraction of the canvas, before jitter.
SIZES: dict[str, float] = {"small": 0.30, "large": 0.50}
PAIR_SIZE = 0.36
# Anchor centres (x, y) as fractions of the canvas, and the caption phrase for each.
POSITIONS: dict[str, tuple[float, float]] = {
    "left": (0.25, 0.5),
    "right": (0.75, 0.5),
    "top": (0.5, 0.25),
    "bottom": (0.5, 0.75),
    "center": (0.5, 0.5),
}
POSITION_PHRASES: dict[str, str] = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "center": "in the center",
}
# Relation -> (caption phrase, centre of the first object, centre of the second object).
RELATIONS: dict[str, tuple[str, tuple[float, float], tuple[float, float]]] = {
    "left of": ("to the left of", (0.25, 0.5), (0.75, 0.5)),
    "above": ("above", (0.5, 0.25), (0.5, 0.75)),
}
CENTER_JITTER = 0.04  # Uniform +- jitter of each centre coordinate (canvas fraction).
SIZE_JITTER = 0.10  # Uniform +- relative jitter of the size.
HELD_OUT_FRACTION = 0.2
SPLITS = ("train", "val", "test")
_MAX_PLACEMENT_TRIES = 100


def one_object_caption(size: str, color: str, shape: str, position: str) -> str:
  return f"a {size} {color} {shape} {POSITION_PHRASES[position]}"


def two_object_caption(color1: str, shape1: str, relation: str, color2: str,
                       shape2: str) -> str:
  return f"a {color1} {shape1} {RELATIONS[relation][0]} a {color2} {shape2}"


def two_object_specs() -> list[tuple[str, str, str, str, str]]:
  """Every (color1, shape1, relation, color2, shape2) of two distinct objects, by caption."""
  objects = [(c, s) for c in COLORS for s in SHAPES]
  specs = [(c1, s1, rel, c2, s2) for rel in RELATIONS
           for (c1, s1) in objects for (c2, s2) in objects if (c1, s1) != (c2, s2)]
  return sorted(specs, key=lambda spec: two_object_caption(*spec))


def held_out_specs(seed: int) -> list[tuple[str, str, str, str, str]]:
  """The 20% of two-object specs reserved for the test split: a seeded permutation's prefix."""
  specs = two_object_specs()
  num_held = int(round(HELD_OUT_FRACTION * len(specs)))
  order = np.random.default_rng(seed).permutation(len(specs))
  return sorted((specs[i] for i in order[:num_held]), key=lambda spec: two_object_caption(*spec))


def shape_mask(shape: str, cx: float, cy: float, size: float, image_size: int) -> np.ndarray:
  """Boolean HxW mask of pixels whose centres fall inside the shape (fractions of the canvas)."""
  coords = (np.arange(image_size, dtype=np.float64) + 0.5) / image_size
  y_Hx1, x_1xW = coords[:, None], coords[None, :]
  half = size / 2
  if shape == "circle":
    return (x_1xW - cx) ** 2 + (y_Hx1 - cy) ** 2 <= half ** 2
  if shape == "square":
    return (np.abs(x_1xW - cx) <= half) & (np.abs(y_Hx1 - cy) <= half)
  if shape == "triangle":
    # Isosceles, apex up: height = base = size; half-width grows linearly from the apex.
    top = cy - half
    inside_rows = (y_Hx1 >= top) & (y_Hx1 <= cy + half)
    return inside_rows & (np.abs(x_1xW - cx) <= (y_Hx1 - top) / 2)
  raise errors.ConfigError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def _jittered(rng: np.random.Generator, centre: tuple[float, float],
              size: float) -> tuple[float, float, float]:
  """Jitters centre and size, then shifts the centre so the object stays inside the canvas."""
  size = size * (1 + rng.uniform(-SIZE_JITTER, SIZE_JITTER))
  half = size / 2
  cx, cy = (c + rng.uniform(-CENTER_JITTER, CENTER_JITTER) for c in centre)
  cx = float(np.clip(cx, half, 1 - half))
  cy = float(np.clip(cy, half, 1 - half))
  return cx, cy, float(size)


def _dilate(mask_HxW: np.ndarray) -> np.ndarray:
  """3x3 binary dilation (8-neighbourhood)."""
  padded = np.pad(mask_HxW, 1)
  h, w = mask_HxW.shape
  out = np.zeros_like(mask_HxW)
  for dy in range(3):
    for dx in range(3):
      out |= padded[dy:dy + h, dx:dx + w]
  return out


def _object(shape: str, color: str, cx: float, cy: float, size: float) -> dict:
  return {"shape": shape, "color": color, "x": round(cx, 4), "y": round(cy, 4),
          "size": round(size, 4)}


def one_object_labels(caption: str) -> dict[str, str]:
  """The named attributes of a single-object caption: shape, color, size and position."""
  words = caption.split()
  position = next(p for p, phrase in POSITION_PHRASES.items() if caption.endswith(phrase))
  return {"shape": words[3], "color": words[2], "size": words[1], "position": position}


def sample_one_object(rng: np.random.Generator, image_size: int) -> tuple[str, list[dict],
                                                                          list[np.ndarray]]:
  """Draws one single-object example: (caption, objects, masks)."""
  shape = SHAPES[rng.integers(len(SHAPES))]
  color = list(COLORS)[rng.integers(len(COLORS))]
  size_name = list(SIZES)[rng.integers(len(SIZES))]
  position = list(POSITIONS)[rng.integers(len(POSITIONS))]
  cx, cy, size = _jittered(rng, POSITIONS[position], SIZES[size_name])
  mask = shape_mask(shape, cx, cy, size, image_size)
  caption = one_object_caption(size_name, color, shape, position)
  return caption, [_object(shape, color, cx, cy, size)], [mask]


def sample_two_objects(rng: np.random.Generator, image_size: int,
                       specs: Sequence[tuple[str, str, str, str, str]]
                       ) -> tuple[str, list[dict], list[np.ndarray]]:
  """Draws a two-object example from `specs`, re-drawing jitter until the objects do not touch."""
  color1, shape1, relation, color2, shape2 = specs[rng.integers(len(specs))]
  _, centre1, centre2 = RELATIONS[relation]
  for _ in range(_MAX_PLACEMENT_TRIES):
    placed = [(shape, color, *_jittered(rng, centre, PAIR_SIZE))
              for shape, color, centre in ((shape1, color1, centre1), (shape2, color2, centre2))]
    masks = [shape_mask(shape, cx, cy, size, image_size) for shape, _, cx, cy, size in placed]
    if not (_dilate(masks[0]) & masks[1]).any():
      caption = two_object_caption(color1, shape1, relation, color2, shape2)
      return caption, [_object(*p) for p in placed], masks
  raise errors.ConfigError(f"image_size={image_size}: could not place two separated objects")


def render(objects: Sequence[dict], masks: Sequence[np.ndarray]) -> np.ndarray:
  """Paints the masks in their objects' colors on black: HxWx3 uint8."""
  h, w = masks[0].shape
  image_HxWx3 = np.zeros((h, w, 3), np.uint8)
  for obj, mask in zip(objects, masks):
    image_HxWx3[mask] = COLORS[obj["color"]]
  return image_HxWx3


def _write_split(split_dir: str, num: int, rng: np.random.Generator, image_size: int,
                 two_specs: Sequence[tuple[str, str, str, str, str]],
                 one_object_fraction: float) -> dict[str, int]:
  os.makedirs(os.path.join(split_dir, "images"), exist_ok=True)
  counts = {"one_object": 0, "two_objects": 0}
  with open(os.path.join(split_dir, "captions.jsonl"), "w") as f:
    for i in range(num):
      if rng.random() < one_object_fraction:
        caption, objects, masks = sample_one_object(rng, image_size)
        counts["one_object"] += 1
      else:
        caption, objects, masks = sample_two_objects(rng, image_size, two_specs)
        counts["two_objects"] += 1
      name = f"images/{i:06d}.png"
      with open(os.path.join(split_dir, name), "wb") as img_file:
        img_file.write(png_bytes(render(objects, masks)))
      record = {"image": name, "caption": caption, "objects": objects}
      if len(objects) == 1:
        record["labels"] = one_object_labels(caption)
      f.write(json.dumps(record) + "\n")
  return counts


def generate(out_dir: str, image_size: int = 32, num_train: int = 20000, num_val: int = 1000,
             num_test: int = 1000, seed: int = 0) -> dict:
  """Renders train/val/test under `out_dir` and returns a summary (also in shapes.json)."""
  if image_size < 16:
    raise errors.ConfigError(f"image_size={image_size}: shapes need at least 16x16 pixels")
  for name, num in (("num_train", num_train), ("num_val", num_val), ("num_test", num_test)):
    if num < 0:
      raise errors.ConfigError(f"{name}={num} must be >= 0")
  held = held_out_specs(seed)
  held_set = set(held)
  seen = [spec for spec in two_object_specs() if spec not in held_set]
  # split -> (examples, two-object specs it draws from, fraction of one-object examples).
  plan = {"train": (num_train, seen, 0.5), "val": (num_val, seen, 0.5),
          "test": (num_test, held, 0.0)}
  os.makedirs(out_dir, exist_ok=True)
  counts = {}
  for split_index, split in enumerate(SPLITS):
    num, specs, one_fraction = plan[split]
    rng = np.random.default_rng([seed, split_index])
    counts[split] = _write_split(os.path.join(out_dir, split), num, rng, image_size, specs,
                                 one_fraction)
  summary = {
      "args": {"image_size": image_size, "num_train": num_train, "num_val": num_val,
               "num_test": num_test, "seed": seed},
      "splits": counts,
      "num_two_object_captions": len(held) + len(seen),
      "held_out_captions": [two_object_caption(*spec) for spec in held],
  }
  with open(os.path.join(out_dir, "shapes.json"), "w") as f:
    json.dump(summary, f, indent=2)
    f.write("\n")
  return summary


def main(argv: Optional[list[str]] = None) -> int:
  """`upgen data shapes`: writes the captioned shapes data set."""
  parser = errors.ArgumentParser(prog="upgen data shapes", description=__doc__.split("\n")[0])
  parser.add_argument("--out", required=True, help="Output directory.")
  parser.add_argument("--image-size", type=errors.whole(1), default=32, help="Image side in pixels.")
  parser.add_argument("--num-train", type=errors.whole(1), default=20000, help="Training examples.")
  parser.add_argument("--num-val", type=errors.whole(0), default=1000, help="Validation examples.")
  parser.add_argument("--num-test", type=errors.whole(0), default=1000,
                      help="Test examples (held-out two-object captions only).")
  parser.add_argument("--seed", type=int, default=0, help="Seeds rendering and the held-out set.")
  args = parser.parse_args(argv)
  summary = generate(args.out, image_size=args.image_size, num_train=args.num_train,
                     num_val=args.num_val, num_test=args.num_test, seed=args.seed)
  sizes = ", ".join(f"{split}={sum(c.values())}" for split, c in summary["splits"].items())
  print(f"wrote {sizes} ({len(summary['held_out_captions'])} held-out captions) to {args.out}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
