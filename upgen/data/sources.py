"""Random-access sources of raw (image, caption) examples, for `upgen tokenize` and the
image tokenizer's input pipeline.

Every source has `__len__` and `__getitem__(i) -> {"image": uint8 HxWx3, "caption": str,
"id": str}` with images resized (shorter side to image_size, bicubic) and center-cropped to
image_size x image_size, and `caption(i) -> str` that reads no pixels.

Folder layout (what `upgen data shapes` writes, and what custom data should look like):

  DIR/captions.jsonl     one JSON object per line: {"image": "images/0001.png",
                         "caption": "a red circle"} (extra keys are allowed; an "id" key,
                         if present, is the example id, else the image path)
  DIR/images/...         the images, paths relative to DIR
"""
from __future__ import annotations

import json
import os
from typing import Any, Optional, Sequence

import numpy as np
from PIL import Image

CAPTIONS_FILE = "captions.jsonl"
Example = dict[str, Any]


def resize_and_crop(image: Image.Image, image_size: int) -> np.ndarray:
  """RGB, shorter side to image_size (bicubic), center crop -> uint8 image_size^2 x 3."""
  image = image.convert("RGB")
  w, h = image.size
  if (w, h) != (image_size, image_size):
    scale = image_size / min(w, h)
    new_w, new_h = max(image_size, round(w * scale)), max(image_size, round(h * scale))
    image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
    left, top = (new_w - image_size) // 2, (new_h - image_size) // 2
    image = image.crop((left, top, left + image_size, top + image_size))
  return np.asarray(image, dtype=np.uint8)


def load_image(path: str, image_size: int) -> np.ndarray:
  """An image file -> uint8 image_size x image_size x 3 (see resize_and_crop)."""
  with Image.open(path) as image:
    return resize_and_crop(image, image_size)


def read_captions(directory: str, require_images: bool = True) -> list[dict[str, str]]:
  """Parses DIR/captions.jsonl -> [{"image": abs path or "", "caption", "id", "line"}].

  Errors name captions.jsonl and the 1-based line number (blank lines are skipped).
  """
  path = os.path.join(directory, CAPTIONS_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: not found (expected one JSON object per line with "
                            f"'image' and 'caption' keys)")
  entries = []
  with open(path, encoding="utf-8") as f:
    for lineno, line in enumerate(f, start=1):
      if not line.strip():
        continue
      where = f"{path}:{lineno}"
      try:
        obj = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not valid JSON: {e}") from e
      if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}")
      caption = obj.get("caption")
      if not isinstance(caption, str):
        raise ValueError(f"{where}: 'caption' must be a string, got {caption!r}")
      image = obj.get("image")
      if require_images or image is not None:
        if not isinstance(image, str) or not image:
          raise ValueError(f"{where}: 'image' must be a relative path string, got {image!r}")
        image_path = os.path.join(directory, image)
        if not os.path.isfile(image_path):
          raise FileNotFoundError(f"{where}: image file {image_path} does not exist")
      else:
        image_path = ""
      example_id = obj.get("id", image if image is not None else f"line{lineno}")
      entries.append({"image": image_path, "caption": caption, "id": str(example_id),
                      "line": where})
  if not entries:
    raise ValueError(f"{path}: no examples")
  return entries


class ImageFolderSource:
  """Images + captions from DIR/captions.jsonl (see module docstring)."""

  def __init__(self, directory: str, image_size: int):
    self.directory = directory
    self.image_size = int(image_size)
    self._entries = read_captions(directory, require_images=True)

  def __len__(self) -> int:
    return len(self._entries)

  def __repr__(self) -> str:
    return f"ImageFolderSource({self.directory!r}, image_size={self.image_size}, len={len(self)})"

  def caption(self, index: int) -> str:
    return self._entries[index]["caption"]

  def example_id(self, index: int) -> str:
    return self._entries[index]["id"]

  def __getitem__(self, index: int) -> Example:
    entry = self._entries[int(index)]
    try:
      pixels = load_image(entry["image"], self.image_size)
    except (OSError, ValueError) as e:
      raise ValueError(f"{entry['line']}: cannot read image {entry['image']}: {e}") from e
    return {"image": pixels, "caption": entry["caption"], "id": entry["id"]}


class CaptionsSource:
  """Captions only (for text-only records): DIR/captions.jsonl, 'image' keys optional."""

  def __init__(self, directory: str):
    self.directory = directory
    self._entries = read_captions(directory, require_images=False)

  def __len__(self) -> int:
    return len(self._entries)

  def caption(self, index: int) -> str:
    return self._entries[index]["caption"]

  def example_id(self, index: int) -> str:
    return self._entries[index]["id"]

  def __getitem__(self, index: int) -> Example:
    entry = self._entries[int(index)]
    return {"caption": entry["caption"], "id": entry["id"]}


class SubsetSource:
  """The examples of `source` at `indices` (e.g. a held-out validation fraction)."""

  def __init__(self, source: Any, indices: Sequence[int]):
    self.source = source
    self.indices = np.asarray(indices, np.int64)

  def __len__(self) -> int:
    return len(self.indices)

  def caption(self, index: int) -> str:
    return self.source.caption(int(self.indices[index]))

  def example_id(self, index: int) -> str:
    return self.source.example_id(int(self.indices[index]))

  def __getitem__(self, index: int) -> Example:
    return self.source[int(self.indices[index])]


def holdout_split(num_examples: int, fraction: float,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Deterministic (train_indices, val_indices): round(fraction * n) (at least 1 when
  fraction > 0) examples chosen by a seeded permutation; both sorted."""
  if not 0.0 <= fraction < 1.0:
    raise ValueError(f"--val-fraction must be in [0, 1), got {fraction}")
  num_val = 0 if fraction == 0 else max(1, round(fraction * num_examples))
  if num_val >= num_examples:
    raise ValueError(f"--val-fraction {fraction} leaves no training examples out of {num_examples}")
  order = np.random.default_rng(seed).permutation(num_examples)
  return np.sort(order[num_val:]), np.sort(order[:num_val])


def _nested_get(example: Any, key: str, name: str) -> Any:
  value = example
  for part in key.split("/"):
    if not isinstance(value, dict) or part not in value:
      raise KeyError(f"tfds:{name}: example has no key {key!r} "
                     f"(top-level keys: {sorted(example) if isinstance(example, dict) else '?'})")
    value = value[part]
  return value


def _as_text(value: Any) -> str:
  if isinstance(value, np.ndarray):
    value = value.reshape(-1)[0] if value.size else b""
  elif isinstance(value, (list, tuple)):
    value = value[0] if value else b""
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class TfdsSource:
  """A TFDS data set read without TensorFlow through `tfds.data_source` (array_record).

  `caption_key` may be a nested path ("captions/text"); for several captions per image the
  first is used. Needs `pip install upgen[tfds]`.
  """

  def __init__(self, name: str, split: str, image_key: str = "image", caption_key: str = "caption",
               image_size: int = 256, data_dir: Optional[str] = None):
    try:
      import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ImportError(f"tfds:{name} needs tensorflow_datasets: pip install upgen[tfds]") from e
    self.name, self.split = name, split
    self.image_key, self.caption_key = image_key, caption_key
    self.image_size = int(image_size)
    self._source = tfds.data_source(name, split=split, data_dir=data_dir,
                                    builder_kwargs={"file_format": "array_record"})

  def __len__(self) -> int:
    return len(self._source)

  def caption(self, index: int) -> str:
    return _as_text(_nested_get(self._source[int(index)], self.caption_key, self.name))

  def example_id(self, index: int) -> str:
    return f"{self.name}/{self.split}/{int(index)}"

  def __getitem__(self, index: int) -> Example:
    example = self._source[int(index)]
    pixels = np.asarray(_nested_get(example, self.image_key, self.name))
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
      pixels = pixels[..., 0]
    image = Image.fromarray(pixels.astype(np.uint8))
    return {"image": resize_and_crop(image, self.image_size),
            "caption": _as_text(_nested_get(example, self.caption_key, self.name)),
            "id": self.example_id(index)}
