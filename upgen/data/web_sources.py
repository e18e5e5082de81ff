"""Sources in the formats web-scale image-text data comes in: webdataset tar shards
(img2dataset's output) and Hugging Face datasets (a `save_to_disk` folder or parquet files).

Both are random-access sources like those of upgen/data/sources.py (`__len__`,
`__getitem__(i) -> {"image", "caption", "id"}`, `caption(i)`, `example_id(i)`). An example
they cannot give (an undecodable image, no caption, a tar member with no pair) raises
errors.BadExample with its reason, which `upgen tokenize` counts or stops on
(--max-bad-fraction); `len()` counts every example, good or bad.

Tar shards are read with the standard library's tarfile, not the `webdataset` package (a
streaming iterable): each shard's member headers are read once into an index (offset and
size of every member), then a member is one ranged read (`paths.read_ranges`), local or
gs://. Hugging Face datasets are read with pyarrow (the optional `web` extra), see HfSource.
"""
from __future__ import annotations

import bisect
import fnmatch
import functools
import io
import json
import os
import posixpath
import re
import tarfile
from concurrent import futures
from typing import Any, Optional, Sequence

import numpy as np

from upgen import errors
from upgen import paths
from upgen.data.images import load_image_sized

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")  # Tried in this order for a key's image.
Example = dict[str, Any]
_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"^(\d+)\.\.(\d+)$")
# Columns of a shard's index: the byte offset and size of a key's image, .txt and .json.
_IMAGE, _TXT, _JSON = 0, 1, 2


def expand_braces(pattern: str) -> list[str]:
  """'a{000..002}.tar' -> a000.tar, a001.tar, a002.tar ({N..M} keeps N's zero padding);
  '{x,y}' -> x, y; several braces multiply out, left to right."""
  match = _BRACE.search(pattern)
  if not match:
    return [pattern]
  body, head, tail = match.group(1), pattern[:match.start()], pattern[match.end():]
  numbers = _RANGE.match(body)
  if numbers:
    lo, hi = int(numbers.group(1)), int(numbers.group(2))
    width = len(numbers.group(1))
    items = [f"{n:0{width}d}" for n in range(lo, hi + 1)]
  else:
    items = body.split(",")
  return [head + item + rest for item in items for rest in expand_braces(tail)]


def shard_paths(pattern: str) -> list[str]:
  """The .tar shards `pattern` names: brace ranges, then * ? [ ] wildcards in the file name
  (not in folders), or a folder (every .tar in it, sorted). Local or remote (gs://)."""
  found = []
  for path in expand_braces(pattern):
    folder, name = posixpath.split(path) if paths.is_remote(path) else os.path.split(path)
    if any(c in name for c in "*?["):
      matches = sorted(n for n in paths.list_names(folder) if fnmatch.fnmatch(n, name))
      found += [paths.join(folder, n) for n in matches]
    elif not path.endswith(".tar"):
      found += [paths.join(path, n) for n in sorted(paths.list_names(path)) if n.endswith(".tar")]
    elif paths.exists(path):
      found.append(path)
    else:
      raise errors.NotFound(f"wds:{pattern}: shard {path} does not exist")
  if not found:
    raise errors.NotFound(f"wds:{pattern}: no .tar shards (give a folder of .tar files or a "
                          "pattern such as /data/{00000..00009}.tar)")
  return found


def _split_name(name: str) -> tuple[str, str]:
  """webdataset's rule: 'dir/000012.seg.png' -> key 'dir/000012', suffix 'seg.png'."""
  folder, base = posixpath.split(name)
  stem, _, suffix = base.partition(".")
  return posixpath.join(folder, stem), suffix.lower()


class _ShardIndex:
  """One tar shard's examples: keys (sorted by first appearance), image extensions, and the
  [offset, size] of each key's image, .txt and .json members (-1 where absent)."""

  def __init__(self, path: str):
    self.path = path
    spans: dict[str, list[Any]] = {}
    try:
      with paths.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r:") as tar:
        for member in tar:
          if not member.isfile():
            continue
          key, suffix = _split_name(member.name)
          entry = spans.setdefault(key, [None, None, None, None])
          span = (member.offset_data, member.size)
          if suffix in IMAGE_EXTENSIONS:
            old = entry[_IMAGE]
            if old is None or IMAGE_EXTENSIONS.index(suffix) < IMAGE_EXTENSIONS.index(old[0]):
              entry[_IMAGE] = (suffix, *span)
          elif suffix == "txt":
            entry[_TXT] = span
          elif suffix == "json":
            entry[_JSON] = span
    except tarfile.TarError as e:
      raise errors.DataError(f"{path}: not a readable tar file ({e})") from None
    self.keys = np.array(list(spans), dtype=str)
    self.image_ext = [e[_IMAGE][0] if e[_IMAGE] else "" for e in spans.values()]
    self.spans_Kx3x2 = np.full((len(spans), 3, 2), -1, np.int64)
    for k, entry in enumerate(spans.values()):
      for column in (_IMAGE, _TXT, _JSON):
        if entry[column] is not None:
          self.spans_Kx3x2[k, column] = entry[column][-2:]

  def read(self, k: int, columns: Sequence[int]) -> list[Optional[bytes]]:
    """The bytes of key k's members in `columns` (None where absent), in one ranged read."""
    present = [c for c in columns if self.spans_Kx3x2[k, c, 0] >= 0]
    starts = [int(self.spans_Kx3x2[k, c, 0]) for c in present]
    ends = [int(self.spans_Kx3x2[k, c, 0] + self.spans_Kx3x2[k, c, 1]) for c in present]
    data = dict(zip(present, paths.read_ranges(self.path, starts, ends) if present else []))
    return [data.get(c) for c in columns]


class TarShardSource:
  """webdataset tar shards (`wds:PATTERN`, see shard_paths), img2dataset's layout: members
  KEY.jpg|jpeg|png|webp with KEY.txt (the caption) or KEY.json (the caption under
  `caption_key`; a .txt wins where both are present). The example id is SHARD/KEY, SHARD
  the shard's file name without .tar. Every shard's headers are indexed when the source is
  made (a thread per shard, up to 16)."""

  def __init__(self, pattern: str, image_size: int, caption_key: str = "caption"):
    self.pattern, self.image_size, self.caption_key = pattern, int(image_size), caption_key
    shard_list = shard_paths(pattern)
    with futures.ThreadPoolExecutor(max_workers=min(16, len(shard_list))) as pool:
      self._shards = list(pool.map(_ShardIndex, shard_list))
    self._starts = np.cumsum([0] + [len(s.keys) for s in self._shards])
    if self._starts[-1] == 0:
      raise errors.DataError(f"wds:{pattern}: {len(shard_list)} shard(s) with no members")

  def __repr__(self) -> str:
    return (f"TarShardSource({self.pattern!r}, image_size={self.image_size}, "
            f"shards={len(self._shards)}, len={len(self)})")

  def __len__(self) -> int:
    return int(self._starts[-1])

  def _locate(self, index: int) -> tuple[_ShardIndex, int]:
    if not 0 <= index < len(self):
      raise IndexError(f"index {index} out of range for {len(self)} examples")
    s = bisect.bisect_right(self._starts, index) - 1
    return self._shards[s], index - int(self._starts[s])

  def example_id(self, index: int) -> str:
    shard, k = self._locate(int(index))
    name = posixpath.basename(shard.path)
    return f"{name[:-4] if name.endswith('.tar') else name}/{shard.keys[k]}"

  def _caption(self, shard: _ShardIndex, k: int, txt: Optional[bytes], meta: Optional[bytes],
               example_id: str) -> str:
    where = f"{shard.path}: {shard.keys[k]}"
    try:
      if txt is not None:
        caption = txt.decode("utf-8")
      elif meta is not None:
        caption = json.loads(meta.decode("utf-8")).get(self.caption_key)
      else:
        raise errors.BadExample(f"{where} has no .txt or .json caption member",
                                reason="missing_caption", example_id=example_id)
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError) as e:
      raise errors.BadExample(f"{where}: caption member is not UTF-8 text or a JSON object ({e})",
                              reason="undecodable_caption", example_id=example_id) from None
    if not isinstance(caption, str) or not caption.strip():
      raise errors.BadExample(f"{where}: no caption ({self.caption_key!r} of its .json is "
                              f"{caption!r})", reason="missing_caption", example_id=example_id)
    return caption.strip()

  def caption(self, index: int) -> str:
    shard, k = self._locate(int(index))
    txt, meta = shard.read(k, (_TXT, _JSON))
    return self._caption(shard, k, txt, meta, self.example_id(index))

  def __getitem__(self, index: int) -> Example:
    shard, k = self._locate(int(index))
    example_id = self.example_id(index)
    if shard.spans_Kx3x2[k, _IMAGE, 0] < 0:
      raise errors.BadExample(
          f"{shard.path}: {shard.keys[k]} has no image member ({', '.join(IMAGE_EXTENSIONS)})",
          reason="missing_image", example_id=example_id)
    data, txt, meta = shard.read(k, (_IMAGE, _TXT, _JSON))
    caption = self._caption(shard, k, txt, meta, example_id)
    where = f"{shard.path}: {shard.keys[k]}.{shard.image_ext[k]}"
    try:
      pixels, size = load_image_sized(io.BytesIO(data), self.image_size, where)
    except errors.DataError as e:
      raise errors.BadExample(str(e), reason="undecodable_image", example_id=example_id) from None
    return {"image": pixels, "caption": caption, "id": example_id, "size": size}


class TarShardParts:
  """wds:PATTERN as parts, one per tar shard, each indexed only when a job opens it
  (`part(i)`, a TarShardSource of that shard): a many-process `upgen tokenize` has each
  process read the headers of the shards it writes only, and no process holds an index of
  the whole data set."""

  def __init__(self, pattern: str, image_size: int, caption_key: str = "caption"):
    self.pattern, self.image_size, self.caption_key = pattern, int(image_size), caption_key
    self.paths = shard_paths(pattern)

  def __repr__(self) -> str:
    return f"TarShardParts({self.pattern!r}, image_size={self.image_size}, shards={self.num_parts})"

  @property
  def num_parts(self) -> int:
    return len(self.paths)

  def part(self, index: int) -> TarShardSource:
    return TarShardSource(self.paths[index], self.image_size, self.caption_key)

  def identity(self) -> dict[str, Any]:
    """The shards' paths, with size and modification time where local (a remote one's
    would cost a read per shard)."""
    stats = [[p] if paths.is_remote(p) else [p, os.stat(p).st_size, os.stat(p).st_mtime_ns]
             for p in self.paths]
    return {"repr": repr(self), "caption_key": self.caption_key, "shards": stats}


def hf_splits(path: str) -> Optional[list[str]]:
  """The split names of a `DatasetDict.save_to_disk` folder (its dataset_dict.json), else
  None (a single data set: a `Dataset.save_to_disk` folder or parquet files)."""
  manifest = paths.join(path, "dataset_dict.json")
  if not paths.exists(manifest):
    return None
  with paths.open(manifest) as f:
    return list(json.load(f)["splits"])


class HfSource:
  """A Hugging Face data set (`hf:PATH`): a `Dataset.save_to_disk` folder (its state.json
  names the .arrow files), one split folder of a `DatasetDict.save_to_disk`, a .parquet
  file, or a folder of .parquet files; local or remote (gs://, read whole for .arrow).

  Read with pyarrow: .arrow files memory-mapped, parquet one row group at a time (the last
  few kept), so nothing is converted or copied first. `image_key` holds a datasets.Image
  feature (a {"bytes", "path"} struct), raw bytes, or a path; decoded by upgen's one image
  decoder. `caption_key` holds a string (a list: its first). The example id is
  FILE/ROW, ROW counted within the file. Needs `pip install upgen[web]` (pyarrow).
  """

  def __init__(self, path: str, image_size: int, image_key: str = "image",
               caption_key: str = "caption"):
    try:
      import pyarrow  # Optional extra (web): only for hf: sources.
    except ImportError as e:
      raise ImportError(f"hf:{path} needs pyarrow: pip install upgen[web]") from e
    self.path, self.image_size = path, int(image_size)
    self.image_key, self.caption_key = image_key, caption_key
    self._pa = pyarrow
    self._blocks = self._list_blocks(path)  # [(file, first row in the file, rows, reader)].
    self._starts = np.cumsum([0] + [rows for _, _, rows, _ in self._blocks])
    if self._starts[-1] == 0:
      raise errors.DataError(f"hf:{path}: no rows")
    names = self._column_names
    for flag, key in (("--image-key", image_key), ("--caption-key", caption_key)):
      if key not in names:
        raise errors.ConfigError(f"hf:{path}: no column {key!r} ({flag}); columns: {names}")

  def _list_blocks(self, path: str) -> list[tuple[str, int, int, Any]]:
    state = paths.join(path, "state.json")
    if paths.exists(state):
      with paths.open(state) as f:
        files = [paths.join(path, d["filename"]) for d in json.load(f)["_data_files"]]
      blocks = []
      for file in files:
        table = self._arrow_table(file)
        blocks.append((file, 0, table.num_rows, table))
      self._column_names = blocks[0][3].column_names if blocks else []
      return blocks
    if path.endswith(".parquet"):
      files = [path]
    else:
      files = [paths.join(path, n) for n in sorted(paths.list_names(path)) if n.endswith(".parquet")]
    if not files:
      raise errors.NotFound(f"hf:{path}: neither a save_to_disk folder (state.json) nor "
                            ".parquet files")
    import pyarrow.parquet as pq  # Optional extra (web), as above.
    blocks = []
    for file in files:
      with paths.open(file, "rb") as f:
        parquet = pq.ParquetFile(f)
        meta, names = parquet.metadata, list(parquet.schema_arrow.names)
      row = 0
      for group in range(meta.num_row_groups):
        rows = meta.row_group(group).num_rows
        blocks.append((file, row, rows, group))
        row += rows
      self._column_names = getattr(self, "_column_names", names)
    return blocks

  def _arrow_table(self, file: str) -> Any:
    pa = self._pa
    source = pa.memory_map(file) if not paths.is_remote(file) else paths.open(file, "rb")
    try:
      return pa.ipc.open_stream(source).read_all()
    except pa.ArrowInvalid:  # Files written as the random-access (file) format.
      return pa.ipc.open_file(source).read_all()

  @functools.lru_cache(maxsize=8)
  def _row_group(self, file: str, group: int) -> Any:
    import pyarrow.parquet as pq  # Optional extra (web), as above.
    with paths.open(file, "rb") as f:
      return pq.ParquetFile(f).read_row_group(group, columns=[self.image_key, self.caption_key])

  def __repr__(self) -> str:
    return f"HfSource({self.path!r}, image_size={self.image_size}, len={len(self)})"

  def __len__(self) -> int:
    return int(self._starts[-1])

  def _cell(self, index: int, key: str) -> tuple[Any, str]:
    if not 0 <= index < len(self):
      raise IndexError(f"index {index} out of range for {len(self)} examples")
    b = bisect.bisect_right(self._starts, index) - 1
    file, first_row, _, reader = self._blocks[b]
    table = self._row_group(file, reader) if isinstance(reader, int) else reader
    row = index - int(self._starts[b])
    return table.column(key)[row].as_py(), f"{posixpath.basename(file)}/{first_row + row}"

  def example_id(self, index: int) -> str:
    return self._cell(int(index), self.caption_key)[1]

  def caption(self, index: int) -> str:
    value, example_id = self._cell(int(index), self.caption_key)
    if isinstance(value, list):
      value = value[0] if value else None
    if not isinstance(value, str) or not value.strip():
      raise errors.BadExample(f"hf:{self.path}: {example_id}: no caption ({self.caption_key!r} "
                              f"is {value!r})", reason="missing_caption", example_id=example_id)
    return value.strip()

  def __getitem__(self, index: int) -> Example:
    value, example_id = self._cell(int(index), self.image_key)
    where = f"hf:{self.path}: {example_id}"
    if isinstance(value, dict):  # datasets.Image: {"bytes": ..., "path": ...}.
      value = value.get("bytes") or value.get("path")
    if not value:
      raise errors.BadExample(f"{where}: no image ({self.image_key!r} is empty)",
                              reason="missing_image", example_id=example_id)
    caption = self.caption(index)
    try:
      if isinstance(value, bytes):
        pixels, size = load_image_sized(io.BytesIO(value), self.image_size, where)
      else:
        with paths.open(str(value), "rb") as f:
          pixels, size = load_image_sized(f, self.image_size, f"{where} ({value})")
    except (errors.DataError, FileNotFoundError) as e:
      raise errors.BadExample(str(e), reason="undecodable_image", example_id=example_id) from None
    return {"image": pixels, "caption": caption, "id": example_id, "size": size}
