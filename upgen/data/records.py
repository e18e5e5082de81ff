"""Pre-tokenized record shards and their metadata.json (schema: docs/data.md).

Each record is a tf.train.Example with features
  image_tokens  int64 list  image token ids in raster order (empty for text-only records,
                            and for pixel records written without an image tokenizer)
  text_tokens   int64 list  text token ids, unpadded (empty for image-only records)
  caption       bytes       utf-8 caption
  id            bytes       example id
  image_png     bytes       only in pixel records (`upgen tokenize --pixels`): the resized,
                            center-cropped RGB image as PNG (metadata.json "pixels")
written to `DIR/{split}-{i:05d}-of-{n:05d}.tfrecord`, with `DIR/metadata.json` describing
the tokenizers and every split's shards. DIR may be a URL (gs://bucket/data; upgen.paths).
"""
from __future__ import annotations

import fnmatch
import glob
import hashlib
import json
import os
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np

from upgen import errors
from upgen import paths
from upgen.data import example_proto
from upgen.data import tfrecord

FORMAT_VERSION = 1
METADATA_FILE = "metadata.json"
KINDS = ("paired", "image", "text")
Example = Mapping[str, Any]


class MetadataError(errors.DataError):
  """metadata.json is missing, malformed, or disagrees with the data or the config."""


def shard_name(split: str, index: int, num_shards: int) -> str:
  return f"{split}-{index:05d}-of-{num_shards:05d}.tfrecord"


def _num_tokens(example: Example, key: str) -> int:
  value = example.get(key)
  return 0 if value is None else len(value)


def example_kind(example: Example) -> str:
  has_image = _num_tokens(example, "image_tokens") > 0 or bool(example.get("image_png"))
  has_text = _num_tokens(example, "text_tokens") > 0
  if has_image and has_text:
    return "paired"
  if has_image or has_text:
    return "image" if has_image else "text"
  raise errors.DataError(f"example {example.get('id')!r} has neither image_tokens nor text_tokens")


def encode_record(example: Example) -> bytes:
  """Serializes one example dict (image_tokens, text_tokens, caption, id) as a tf.train.Example."""
  def ids(key: str) -> np.ndarray:
    value = example.get(key)
    return np.zeros(0, np.int64) if value is None else np.asarray(value, np.int64).reshape(-1)
  features = {
      "image_tokens": ids("image_tokens"),
      "text_tokens": ids("text_tokens"),
      "caption": str(example.get("caption", "")).encode("utf-8"),
      "id": str(example.get("id", "")).encode("utf-8"),
  }
  if example.get("image_png"):
    features["image_png"] = bytes(example["image_png"])
  return example_proto.encode_example(features)


def file_sha256(path: str) -> str:
  digest = hashlib.sha256()
  with paths.open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def write_split(out_dir: str, split: str, examples_iter: Iterable[Example], num_shards: int,
                kind: Optional[str] = None) -> dict[str, Any]:
  """Writes `examples_iter` round-robin into `num_shards` shards of `split`; returns its metadata.

  `kind` ("paired" / "image" / "text") is inferred from the first example when None; every
  example must match it. The new shards are written beside the split's old ones under a
  temporary name and renamed over them only when every one is complete, so an error partway
  (an unreadable image) leaves the old split as it was; `update_metadata` then removes the
  old shards the new split does not name.
  """
  if num_shards < 1:
    raise errors.DataError(f"num_shards must be >= 1, got {num_shards}")
  if kind is not None and kind not in KINDS:
    raise errors.DataError(f"kind must be one of {KINDS}, got {kind!r}")
  paths.makedirs(out_dir)
  names = [shard_name(split, i, num_shards) for i in range(num_shards)]
  tmp_paths = [paths.join(out_dir, name + ".tmp") for name in names]
  writers = [tfrecord.TFRecordWriter(p) for p in tmp_paths]
  max_text_len, count, id_range = 0, 0, {}
  try:
    for example in examples_iter:
      this_kind = example_kind(example)
      kind = kind or this_kind
      if this_kind != kind:
        raise errors.DataError(f"split {split!r} is {kind!r} but example {example.get('id')!r} "
                               f"(number {count}) is {this_kind!r}")
      max_text_len = max(max_text_len, _num_tokens(example, "text_tokens"))
      widen_id_range(id_range, example)
      writers[count % num_shards].write(encode_record(example))
      count += 1
    if count == 0:
      raise errors.DataError(f"split {split!r}: no examples to write")
  except BaseException:
    for w, p in zip(writers, tmp_paths):
      w.close()
      paths.remove(p)
    raise
  for w in writers:
    w.close()
  counts = [w.num_records for w in writers]
  for tmp, name in zip(tmp_paths, names):
    paths.replace(tmp, paths.join(out_dir, name))
  return {
      "kind": kind,
      "shards": names,
      "records_per_shard": counts,
      "sha256": [file_sha256(paths.join(out_dir, n)) for n in names],
      "max_text_len": max_text_len,
      "id_range": id_range,
  }


def widen_id_range(id_range: dict[str, list[int]], example: Example) -> None:
  """Widens id_range[key] = [lowest, highest] to the example's token ids."""
  for key in ("text_tokens", "image_tokens"):
    value = example.get(key)
    ids = np.asarray(() if value is None else value, np.int64)
    if ids.size:
      low, high = int(ids.min()), int(ids.max())
      old = id_range.get(key, [low, high])
      id_range[key] = [min(old[0], low), max(old[1], high)]


def _abs_path(path: Any) -> str:
  """Absolute path when `path` exists (readers load tokenizers from it), else as given."""
  return paths.absolute(path) if paths.exists(str(path)) else str(path)


def text_tokenizer_info(tok: Any) -> dict[str, Any]:
  """metadata.json's text_tokenizer entry for a text tokenizer object."""
  return {"identity": tok.identity(), "vocab_size": int(tok.vocab_size), "pad_id": int(tok.pad_id),
          "mask_id": int(tok.mask_id), "bos_id": int(tok.bos_id), "eos_id": int(tok.eos_id),
          "path": _abs_path(tok.path)}


def image_tokenizer_info(tok: Any) -> dict[str, Any]:
  """metadata.json's image_tokenizer entry for an image tokenizer object."""
  return {"identity": tok.identity(), "codebook_size": int(tok.codebook_size),
          "grid": [int(g) for g in tok.grid], "image_size": int(tok.image_size),
          "path": _abs_path(tok.path)}


def _write_json_atomic(path: str, obj: Any) -> None:
  paths.write_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def compatible_splits(out_dir: str, split: str, text_tokenizer: Optional[Mapping[str, Any]],
                      image_tokenizer: Optional[Mapping[str, Any]],
                      replace: bool = False,
                      pixels: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
  """The splits of an existing out_dir/metadata.json that `split` can join: all of them when
  the tokenizer (and pixels) entries are equal; none with `replace` (`update_metadata`
  deletes their shards once the new metadata is written); otherwise a MetadataError naming
  the file and the differing key. Deletes nothing: call it before writing shards."""
  path = paths.join(out_dir, METADATA_FILE)
  if not paths.exists(path):
    return {}
  try:
    old = read_metadata(out_dir)
  except MetadataError:
    if not replace:
      raise
    return {}
  new = {"text_tokenizer": text_tokenizer, "image_tokenizer": image_tokenizer,
         "pixels": pixels}
  differs = [k for k in ("text_tokenizer", "image_tokenizer", "pixels")
             if old.get(k) != new[k]]
  if not differs:
    return dict(old["splits"])
  if not replace:
    key = differs[0]
    raise MetadataError(f"{path}: key {key!r} differs from the tokenizer used for split "
                        f"{split!r}; write to a fresh output directory")
  return {}


def update_metadata(out_dir: str, split: str, split_info: Mapping[str, Any],
                    text_tokenizer: Optional[Mapping[str, Any]],
                    image_tokenizer: Optional[Mapping[str, Any]], replace: bool = False,
                    pixels: Optional[Mapping[str, Any]] = None) -> dict:
  """Adds/overwrites `split` in out_dir/metadata.json (see compatible_splits for the rules
  on an existing file) and returns the new metadata. `pixels` ({"image_size": S, "format":
  "png"}) says the records carry images; metadata without the key carries none."""
  try:
    old_shards = {s for info in read_metadata(out_dir)["splits"].values()
                  for s in info["shards"]}
  except MetadataError:  # None yet, or unreadable: nothing it names to clean up.
    old_shards = set()
  meta = {"format_version": FORMAT_VERSION, "text_tokenizer": text_tokenizer,
          "image_tokenizer": image_tokenizer,
          "splits": compatible_splits(out_dir, split, text_tokenizer, image_tokenizer, replace,
                                      pixels)}
  if pixels is not None:
    meta["pixels"] = dict(pixels)
  meta["splits"][split] = dict(split_info)
  _write_json_atomic(paths.join(out_dir, METADATA_FILE), meta)
  # Only now, with the new metadata in place: the shards it no longer names.
  named = {s for info in meta["splits"].values() for s in info["shards"]}
  for shard in sorted(old_shards - named):
    if paths.exists(paths.join(out_dir, shard)):
      paths.remove(paths.join(out_dir, shard))
  remove_stale_shards(out_dir, split, split_info["shards"])
  return meta


def remove_stale_shards(out_dir: str, split: str, keep: Sequence[str]) -> None:
  """Deletes the shards of `split` in out_dir that metadata.json no longer names (an older
  write with another shard count), once the new metadata is in place."""
  pattern = f"{glob.escape(split)}-*-of-*.tfrecord"
  for name in fnmatch.filter(paths.list_names(out_dir), pattern):
    if name not in keep:
      paths.remove(paths.join(out_dir, name))


def _check(cond: bool, path: str, key: str, msg: str) -> None:
  if not cond:
    raise MetadataError(f"{path}: key {key!r} {msg}")


def _is_int(x: Any) -> bool:
  return isinstance(x, int) and not isinstance(x, bool)


def _check_fields(obj: Any, path: str, prefix: str, fields: Mapping[str, Any]) -> None:
  _check(isinstance(obj, dict), path, prefix, "must be an object")
  for name, kind in fields.items():
    key = f"{prefix}.{name}"
    _check(name in obj, path, key, "is missing")
    ok = _is_int(obj[name]) if kind is int else isinstance(obj[name], kind)
    _check(ok, path, key, f"must be of type {getattr(kind, '__name__', kind)}, got {obj[name]!r}")


# The vocabulary size each tokenizer entry states, and where its identity says it again.
_SIZES = {"text_tokenizer": ("vocab_size", ("vocab_size",)),
          "image_tokenizer": ("codebook_size", ("config", "codebook_size"))}
_ID_KEYS = {"text_tokens": "text_tokenizer", "image_tokens": "image_tokenizer"}


def _vocab(meta: Mapping[str, Any], key: str) -> Optional[int]:
  return meta[key][_SIZES[key][0]] if meta.get(key) is not None else None


def _check_sizes(meta: Mapping[str, Any], path: str) -> None:
  """Each tokenizer entry's size agrees with the identity of the tokenizer that wrote the
  records (an edited size would build a model of another vocabulary), and its special ids
  lie inside it."""
  for key, (size_key, where) in _SIZES.items():
    entry = meta[key]
    if entry is None:
      continue
    size = entry[size_key]
    _check(size > 0, path, f"{key}.{size_key}", f"must be positive, got {size}")
    said = entry["identity"]
    for part in where:
      said = said.get(part) if isinstance(said, dict) else None
    _check(said is None or said == size, path, f"{key}.{size_key}",
           f"is {size} but the tokenizer the records were written with has {said} "
           f"({key}.identity.{'.'.join(where)})")
    if key == "text_tokenizer":
      for special in ("pad_id", "bos_id", "eos_id"):
        _check(0 <= entry[special] < size, path, f"{key}.{special}",
               f"is {entry[special]}, outside the vocabulary [0, {size})")


def _check_id_range(meta: Mapping[str, Any], info: Mapping[str, Any], path: str,
                    prefix: str) -> None:
  """The split's token ids (their range, recorded when written) fit its tokenizers, so a
  mismatch stops the run when the records are opened, not at the first bad record read."""
  id_range = info.get("id_range", {})  # Absent in records written before it was recorded.
  _check(isinstance(id_range, dict), path, f"{prefix}.id_range", "must be an object")
  for ids_key, low_high in id_range.items():
    key = f"{prefix}.id_range.{ids_key}"
    _check(ids_key in _ID_KEYS, path, key, f"is not one of {sorted(_ID_KEYS)}")
    _check(isinstance(low_high, list) and len(low_high) == 2 and all(map(_is_int, low_high)),
           path, key, f"must be [lowest, highest], got {low_high!r}")
    size = _vocab(meta, _ID_KEYS[ids_key])
    if size is None:  # Pixel records with no image tokenizer hold no image ids.
      continue
    _check(0 <= low_high[0] and low_high[1] < size, path, key,
           f"{low_high} reaches outside {_ID_KEYS[ids_key]}'s [0, {size}): these records "
           "were written with another tokenizer")


def read_metadata(data_dir: str) -> dict[str, Any]:
  """Loads and validates data_dir/metadata.json; errors name the file and the key."""
  path = paths.join(data_dir, METADATA_FILE)
  if not paths.exists(path):
    raise MetadataError(f"{path}: not found (run `upgen tokenize` to create records)")
  try:
    with paths.open(path) as f:
      meta = json.load(f)
  except json.JSONDecodeError as e:
    raise MetadataError(f"{path}: not valid JSON: {e}") from e
  _check(isinstance(meta, dict), path, "", "top level must be an object")
  _check(meta.get("format_version") == FORMAT_VERSION, path, "format_version",
         f"must be {FORMAT_VERSION}, got {meta.get('format_version')!r}")
  for key in ("text_tokenizer", "image_tokenizer", "splits"):
    _check(key in meta, path, key, "is missing")
  if meta["text_tokenizer"] is not None:
    _check_fields(meta["text_tokenizer"], path, "text_tokenizer",
                  {"identity": dict, "vocab_size": int, "pad_id": int, "mask_id": int,
                   "bos_id": int, "eos_id": int, "path": str})
  if meta["image_tokenizer"] is not None:
    _check_fields(meta["image_tokenizer"], path, "image_tokenizer",
                  {"identity": dict, "codebook_size": int, "grid": list, "image_size": int,
                   "path": str})
    grid = meta["image_tokenizer"]["grid"]
    _check(len(grid) == 2 and all(_is_int(g) and g > 0 for g in grid), path,
           "image_tokenizer.grid", f"must be [height, width], got {grid!r}")
  _check_sizes(meta, path)
  meta.setdefault("pixels", None)  # Written before pixel records existed: none.
  if meta["pixels"] is not None:
    _check_fields(meta["pixels"], path, "pixels", {"image_size": int, "format": str})
    _check(meta["pixels"]["format"] == "png", path, "pixels.format",
           f"must be 'png', got {meta['pixels']['format']!r}")
    _check(meta["pixels"]["image_size"] > 0, path, "pixels.image_size", "must be positive")
  _check(isinstance(meta["splits"], dict), path, "splits", "must be an object")
  for split, info in meta["splits"].items():
    prefix = f"splits.{split}"
    _check_fields(info, path, prefix, {"kind": str, "shards": list, "records_per_shard": list,
                                       "sha256": list, "max_text_len": int})
    _check(info["kind"] in KINDS, path, f"{prefix}.kind",
           f"must be one of {KINDS}, got {info['kind']!r}")
    n = len(info["shards"])
    _check(n > 0, path, f"{prefix}.shards", "must list at least one shard")
    for key in ("records_per_shard", "sha256"):
      _check(len(info[key]) == n, path, f"{prefix}.{key}", f"must have one entry per shard ({n})")
    _check(all(_is_int(c) and c >= 0 for c in info["records_per_shard"]), path,
           f"{prefix}.records_per_shard", "must be non-negative integers")
    _check_id_range(meta, info, path, prefix)
    needs_text = info["kind"] in ("paired", "text")
    needs_image = info["kind"] in ("paired", "image")
    _check(not needs_text or meta["text_tokenizer"] is not None, path, "text_tokenizer",
           f"is null but split {split!r} has text")
    _check(not needs_image or meta["image_tokenizer"] is not None or meta["pixels"] is not None,
           path, "image_tokenizer", f"is null (and no pixels) but split {split!r} has images")
  return meta


def tokenizer_path(data_dir: str, metadata: Mapping[str, Any], key: str) -> str:
  """Where metadata[key] (text_tokenizer / image_tokenizer) says the tokenizer lives."""
  path = metadata.get(key, {}).get("path", "")
  if path and not (os.path.isabs(path) or paths.is_remote(path)):
    path = paths.join(data_dir, path)
  if not path or not paths.exists(path):
    raise errors.NotFound(
        f"{paths.join(data_dir, METADATA_FILE)}: {key}.path={metadata.get(key, {}).get('path')!r}"
        " does not exist; the tokenizers must stay where `upgen tokenize` found them")
  return path


def split_info(meta: Mapping[str, Any], data_dir: str, split: str) -> Mapping[str, Any]:
  if split not in meta["splits"]:
    raise MetadataError(f"{os.path.join(data_dir, METADATA_FILE)}: key 'splits.{split}' is "
                        f"missing (splits: {sorted(meta['splits'])})")
  return meta["splits"][split]


def verify_sha256(data_dir: str, split: str) -> None:
  """Checks every shard of `split` against the sha256 recorded in metadata.json."""
  meta = read_metadata(data_dir)
  info = split_info(meta, data_dir, split)
  for name, want in zip(info["shards"], info["sha256"]):
    got = file_sha256(paths.join(data_dir, name))
    if got != want:
      raise MetadataError(f"{paths.join(data_dir, name)}: sha256 {got} differs from "
                          f"{want} recorded in metadata.json")


class RecordDataSource:
  """Random access over all shards of one split (a grain RandomAccessDataSource).

  The index (record offsets) of every shard is built once at construction, verifying both
  CRCs of every record; records are decoded on access into
  {"image_tokens": int32 [Li], "text_tokens": int32 [Lt], "caption": str, "id": str}.
  Ids outside [0, image_vocab_size) / [0, text_vocab_size), or an image of other than
  image_seq_len tokens, raise an error naming the shard file, the record index and the id.
  """

  def __init__(self, data_dir: str, split: str, *, image_vocab_size: Optional[int] = None,
               text_vocab_size: Optional[int] = None, image_seq_len: Optional[int] = None,
               verify: bool = True):
    self.data_dir, self.split = data_dir, split
    self.metadata = read_metadata(data_dir)
    self.info = split_info(self.metadata, data_dir, split)
    self.kind = self.info["kind"]
    self._limits = {"image_tokens": image_vocab_size, "text_tokens": text_vocab_size}
    self._image_seq_len = image_seq_len
    self._shards = []
    for name, want in zip(self.info["shards"], self.info["records_per_shard"]):
      path = paths.join(data_dir, name)
      if not paths.exists(path):
        raise MetadataError(f"{path}: shard listed in metadata.json is missing")
      shard = tfrecord.IndexedTFRecordFile(path, verify=verify)
      if len(shard) != want:
        raise MetadataError(f"{path}: has {len(shard)} records but metadata.json "
                            f"splits.{split}.records_per_shard says {want}")
      self._shards.append(shard)
    self._ends = np.cumsum([len(s) for s in self._shards])

  def __len__(self) -> int:
    return int(self._ends[-1]) if len(self._ends) else 0

  def __repr__(self) -> str:
    return f"RecordDataSource(data_dir={self.data_dir!r}, split={self.split!r}, len={len(self)})"

  def locate(self, index: int) -> tuple[tfrecord.IndexedTFRecordFile, int]:
    """Global record index -> (shard, record index within the shard)."""
    if not 0 <= index < len(self):
      raise IndexError(f"record {index} out of range for {self!r}")
    shard = int(np.searchsorted(self._ends, index, side="right"))
    return self._shards[shard], index - (int(self._ends[shard - 1]) if shard else 0)

  def where(self, index: int) -> str:
    """'SHARD_PATH: record I' for error messages."""
    shard, local = self.locate(int(index))
    return f"{shard.path}: record {local}"

  def read(self, index: int) -> bytes:
    """The serialized tf.train.Example of record `index` (no decoding, no checks)."""
    shard, local = self.locate(int(index))
    return shard[local]

  def read_many(self, indices: Sequence[int]) -> list[bytes]:
    """`read` of every index, one batched read per shard (remote shards: ranged reads)."""
    located = [self.locate(int(i)) for i in indices]
    by_shard: dict[int, list[int]] = {}
    for position, (shard, _) in enumerate(located):
      by_shard.setdefault(id(shard), []).append(position)
    out: list[bytes] = [b""] * len(located)
    for positions in by_shard.values():
      shard = located[positions[0]][0]
      for position, data in zip(positions, shard.read_many([located[p][1] for p in positions])):
        out[position] = data
    return out

  def __getitem__(self, index: int) -> dict[str, Any]:
    shard, local = self.locate(int(index))
    where = f"{shard.path}: record {local}"
    try:
      features = example_proto.decode_example(shard[local])
    except example_proto.ProtoDecodeError as e:
      raise errors.DataError(f"{where}: not a valid tf.train.Example: {e}") from e
    out: dict[str, Any] = {}
    for key in ("image_tokens", "text_tokens"):
      ids = features.get(key)
      if not isinstance(ids, np.ndarray) or ids.dtype != np.int64:
        raise errors.DataError(f"{where}: feature {key!r} missing or not an int64 list")
      limit = self._limits[key]
      # As uint64, negative ids are huge: one max() checks both bounds.
      bound = np.iinfo(np.int64).max if limit is None else limit
      if len(ids) and ids.view(np.uint64).max() >= bound:
        bad_L = (ids < 0) if limit is None else ((ids < 0) | (ids >= limit))
        raise errors.DataError(f"{where}: {key} id {int(ids[bad_L][0])} outside the vocabulary "
                               f"[0, {limit if limit is not None else 'inf'})")
      out[key] = ids.astype(np.int32)
    num_image = len(out["image_tokens"])
    if num_image and self._image_seq_len is not None and num_image != self._image_seq_len:
      raise errors.DataError(f"{where}: {len(out['image_tokens'])} image tokens, expected "
                             f"image_seq_len={self._image_seq_len}")
    for key in ("caption", "id"):
      value = features.get(key)
      if not isinstance(value, list) or len(value) != 1:
        raise errors.DataError(f"{where}: feature {key!r} missing or not a single bytes value")
      out[key] = value[0].decode("utf-8", errors="replace")
    return out
