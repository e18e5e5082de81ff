"""Random-access sources of raw (image, caption) examples, for `upgen tokenize` and the
image tokenizer's input pipeline.

Every source has `__len__` and `__getitem__(i) -> {"image": uint8 HxWx3, "caption": str,
"id": str, "size": (width, height)}` with images resized (shorter side to image_size,
bicubic) and center-cropped to image_size x image_size ("size" is the image's own, before),
`caption(i) -> str` that reads no pixels, and `identity()`: what a resumed `upgen tokenize`
compares to know the source is the one it started on (`identity` below).

Folder layout (what `upgen data shapes` writes, and what custom data should look like):

  DIR/captions.jsonl     one JSON object per line: {"image": "images/0001.png",
                         "caption": "a red circle"} (extra keys are allowed; an "id" key,
                         if present, is the example id, else the image path)
  DIR/images/...         the images, paths relative to DIR
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Optional, Sequence

import numpy as np
from PIL import Image

from upgen import errors
# The one image decoder (levels, orientation, transparency), by the names callers use here.
from upgen.data.images import load_image, load_image_sized, resize_and_crop  # noqa: F401 (load_image: by this name)

CAPTIONS_FILE = "captions.jsonl"
Example = dict[str, Any]


def captions_path(path: str) -> str:
  """A captions file: `path` itself (a .jsonl file) or path/captions.jsonl."""
  return path if path.endswith(".jsonl") else os.path.join(path, CAPTIONS_FILE)


def read_captions(path: str, *, caption_key: str = "caption",
                  require_images: bool = True) -> list[dict[str, Any]]:
  """Parses a captions file (DIR/captions.jsonl, or any .jsonl such as a samples
  manifest) -> [{"image": abs path or "", "caption", "id", "line", "record"}].

  One JSON object per line with a `caption_key` string and an "image" path relative to the
  file's folder (checked to exist unless `require_images` is False); "id", if present, is
  the example id (else the image path); "record" is the whole object (extra keys such as
  the shapes' "objects"). Errors name the file and the 1-based line number (blank lines
  are skipped).
  """
  path = captions_path(path)
  directory = os.path.dirname(os.path.abspath(path))
  if not os.path.exists(path):
    raise errors.NotFound(f"{path}: not found (expected one JSON object per line with "
                            f"'image' and {caption_key!r} keys)")
  entries = []
  with open(path, encoding="utf-8") as f:
    for lineno, line in enumerate(f, start=1):
      if not line.strip():
        continue
      where = f"{path}:{lineno}"
      try:
        obj = json.loads(line)
      except json.JSONDecodeError as e:
        raise errors.DataError(f"{where}: not valid JSON: {e}") from e
      if not isinstance(obj, dict):
        raise errors.DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
      caption = obj.get(caption_key)
      if not isinstance(caption, str):
        raise errors.DataError(f"{where}: {caption_key!r} must be a string, got {caption!r}")
      image = obj.get("image")
      if require_images:
        if not isinstance(image, str) or not image:
          raise errors.DataError(f"{where}: 'image' must be a relative path string, got {image!r}")
        image_path = os.path.join(directory, image)
        if not os.path.isfile(image_path):
          raise errors.NotFound(f"{where}: image file {image_path} does not exist")
      else:  # Captions only: an image, if named, is not opened.
        image_path = os.path.join(directory, image) if isinstance(image, str) and image else ""
      example_id = obj.get("id", image if image is not None else f"line{lineno}")
      entries.append({"image": image_path, "caption": caption, "id": str(example_id),
                      "line": where, "record": obj})
  if not entries:
    raise errors.DataError(f"{path}: no examples")
  return entries


def write_captions(path: str, rows: Sequence[dict[str, Any]]) -> None:
  """Writes rows (each with "image" and "caption", absolute or relative image paths, extra
  keys kept) as a captions file that `read_captions` reads back."""
  path = captions_path(path)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    for row in rows:
      f.write(json.dumps(row) + "\n")


def identity(source: Any) -> dict[str, Any]:
  """The source's own identity(), or its repr and length (every source here has one)."""
  own = getattr(source, "identity", None)
  return own() if callable(own) else {"repr": repr(source), "len": len(source)}


class CaptionsSource:
  """Captions from DIR/captions.jsonl; 'image' keys optional and never opened (text-only
  records). `__getitem__(i) -> {"caption", "id"}`."""

  def __init__(self, directory: str, *, require_images: bool = False):
    self.directory = directory
    self._entries = read_captions(directory, require_images=require_images)

  def __repr__(self) -> str:
    return f"{type(self).__name__}({self.directory!r}, len={len(self)})"

  def __len__(self) -> int:
    return len(self._entries)

  def identity(self) -> dict[str, Any]:
    """The captions file's path and sha256 (an edited file is another source); the images
    are taken as they are named."""
    with open(captions_path(self.directory), "rb") as f:
      digest = hashlib.sha256(f.read()).hexdigest()
    return {"repr": repr(self), "captions_sha256": digest}

  def caption(self, index: int) -> str:
    return self._entries[index]["caption"]

  def example_id(self, index: int) -> str:
    return self._entries[index]["id"]

  def __getitem__(self, index: int) -> Example:
    entry = self._entries[int(index)]
    return {"caption": entry["caption"], "id": entry["id"]}


class ImageFolderSource(CaptionsSource):
  """Images + captions from DIR/captions.jsonl (see module docstring), every image checked
  to exist; `__getitem__` adds the resized, center-cropped pixels."""

  def __init__(self, directory: str, image_size: int):
    super().__init__(directory, require_images=True)
    self.image_size = int(image_size)

  def __repr__(self) -> str:
    return f"ImageFolderSource({self.directory!r}, image_size={self.image_size}, len={len(self)})"

  def __getitem__(self, index: int) -> Example:
    entry = self._entries[int(index)]
    try:
      pixels, size = load_image_sized(entry["image"], self.image_size)
    except errors.DataError as e:  # It names the image; this adds the captions line.
      raise errors.BadExample(f"{entry['line']}: {e}", reason="undecodable_image",
                              example_id=entry["id"]) from None
    except errors.UserError as e:
      raise type(e)(f"{entry['line']}: {e}") from None
    return {"image": pixels, "caption": entry["caption"], "id": entry["id"], "size": size}


class SubsetSource:
  """The examples of `source` at `indices` (e.g. a held-out validation fraction)."""

  def __init__(self, source: Any, indices: Sequence[int]):
    self.source = source
    self.indices = np.asarray(indices, np.int64)
    self.image_size = getattr(source, "image_size", None)  # What `upgen tokenize` checks.

  def __repr__(self) -> str:
    return f"SubsetSource({self.source!r}, len={len(self)})"

  def __len__(self) -> int:
    return len(self.indices)

  def identity(self) -> dict[str, Any]:
    return {"source": identity(self.source),
            "indices_sha256": hashlib.sha256(self.indices.tobytes()).hexdigest()}

  def caption(self, index: int) -> str:
    return self.source.caption(int(self.indices[index]))

  def example_id(self, index: int) -> str:
    return self.source.example_id(int(self.indices[index]))

  def __getitem__(self, index: int) -> Example:
    return self.source[int(self.indices[index])]


class ConcatSource:
  """Sources one after another (the parts of a job's shard)."""

  def __init__(self, parts: Sequence[Any]):
    self.parts = list(parts)
    self._starts = np.cumsum([0] + [len(p) for p in self.parts])
    self.image_size = getattr(self.parts[0], "image_size", None) if self.parts else None

  def __repr__(self) -> str:
    return f"ConcatSource({len(self.parts)} parts, len={len(self)})"

  def __len__(self) -> int:
    return int(self._starts[-1])

  def _locate(self, index: int) -> tuple[Any, int]:
    if not 0 <= index < len(self):
      raise IndexError(f"index {index} out of range for {len(self)} examples")
    p = int(np.searchsorted(self._starts, index, side="right")) - 1
    return self.parts[p], index - int(self._starts[p])

  def caption(self, index: int) -> str:
    part, i = self._locate(int(index))
    return part.caption(i)

  def example_id(self, index: int) -> str:
    part, i = self._locate(int(index))
    return part.example_id(i)

  def __getitem__(self, index: int) -> Example:
    part, i = self._locate(int(index))
    return part[i]


def id_fraction(example_id: str) -> float:
  """A number in [0, 1) fixed by the example id alone (sha256): hold-out by id."""
  return int.from_bytes(hashlib.sha256(example_id.encode("utf-8")).digest()[:8], "big") / 2**64


class HeldOutParts:
  """The "train" or "val" examples of a source in parts (web_sources.TarShardParts): val
  are those whose id_fraction is below `fraction`, decided within each part when it is
  opened, so no index of the whole data set is needed (about `fraction` of the examples,
  not an exact count as holdout_split gives)."""

  def __init__(self, parts: Any, fraction: float, which: str):
    if which not in ("train", "val"):
      raise ValueError(f"which must be train or val, got {which!r}")
    self.parts, self.fraction, self.which = parts, float(fraction), which
    self.image_size = parts.image_size
    self.num_parts = parts.num_parts

  def __repr__(self) -> str:
    return f"HeldOutParts({self.parts!r}, {self.which} of {self.fraction:g})"

  def part(self, index: int) -> SubsetSource:
    source = self.parts.part(index)
    val = [id_fraction(source.example_id(i)) < self.fraction for i in range(len(source))]
    return SubsetSource(source, [i for i, v in enumerate(val) if v == (self.which == "val")])

  def identity(self) -> dict[str, Any]:
    return {"parts": identity(self.parts), "fraction": self.fraction, "which": self.which}


def holdout_split(num_examples: int, fraction: float,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Deterministic (train_indices, val_indices): round(fraction * n) (at least 1 when
  fraction > 0) examples chosen by a seeded permutation; both sorted. The one splitter of
  `upgen tokenize` and `upgen quickstart --source`."""
  if not 0.0 <= fraction < 1.0:
    raise errors.ConfigError(f"--val-fraction must be in [0, 1), got {fraction}")
  num_val = 0 if fraction == 0 else max(1, round(fraction * num_examples))
  if num_val >= num_examples:
    raise errors.ConfigError(
        f"--val-fraction {fraction} leaves no training examples out of {num_examples}")
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
      import tensorflow_datasets as tfds  # Optional extra (TensorFlow): only for tfds: sources.
    except ImportError as e:
      raise ImportError(f"tfds:{name} needs tensorflow_datasets: pip install upgen[tfds]") from e
    self.name, self.split = name, split
    self.image_key, self.caption_key = image_key, caption_key
    self.image_size = int(image_size)
    self._source = tfds.data_source(name, split=split, data_dir=data_dir,
                                    builder_kwargs={"file_format": "array_record"})

  def __repr__(self) -> str:
    return (f"TfdsSource({self.name!r}, split={self.split!r}, image_size={self.image_size}, "
            f"len={len(self)})")

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
    if pixels.dtype == np.uint16:  # tfds' 16-bit PNGs: 65535 is 255, as images.py reads them.
      pixels = np.round(pixels / 257.0)
    elif pixels.dtype != np.uint8:
      raise errors.DataError(f"{self.example_id(index)}: {self.image_key!r} is {pixels.dtype}, "
                             "expected uint8 or uint16 pixels")
    example_id = self.example_id(index)
    if pixels.ndim not in (2, 3) or min(pixels.shape[:2]) == 0:
      raise errors.BadExample(f"{example_id}: {self.image_key!r} has shape {pixels.shape}, not "
                              "an image", reason="undecodable_image", example_id=example_id)
    caption = _as_text(_nested_get(example, self.caption_key, self.name))
    try:
      image = Image.fromarray(pixels.astype(np.uint8))
      pixels = resize_and_crop(image, self.image_size, example_id)
    except (errors.DataError, ValueError, TypeError) as e:  # A shape or mode PIL refuses.
      raise errors.BadExample(f"{example_id}: {self.image_key!r} is not an image ({e})",
                              reason="undecodable_image", example_id=example_id) from None
    return {"image": pixels, "caption": caption, "id": example_id,
            "size": (int(image.width), int(image.height))}
