"""grain input pipelines: token batches for the generative families, image batches for the
image tokenizer (semantics: docs/data.md).

Train order. Every source (data.dir as "paired" plus data.extra_sources) is a
RecordDataSource, globally shuffled with its own seed (derived from config.seed) and
repeated with a new permutation each epoch; sources are interleaved deterministically in
proportion to their weights (grain MapDataset.mix), then data.text_dropout / image_dropout
turn paired examples into image-only / text-only ones with a per-example rng. That gives
one global, infinite example order, cut into global batches of B = data.batch_size: batch s
is the examples [s * B, (s + 1) * B). Each process loads only `rows` of every global batch:
the rows its devices hold in the sharded batch (the trainer takes them from the batch
sharding, `upgen.runtime.mesh.process_rows`; with the usual meshes process p of P gets the
block [p * B / P, (p + 1) * B / P)). So the processes together hold each global batch
exactly, no example twice, every row where a one-process run has it: the batches (and any
per-row randomness of the step) do not depend on the number of processes. Iterators are
grain DatasetIterators: `get_state()` is a small JSON-serializable dict (the global batch
index, the same on every process), `set_state()` resumes exactly, also with another number
of processes (grain.checkpoint.CheckpointSave / CheckpointRestore save it with orbax).
"""
from __future__ import annotations

import functools
import hashlib
import os
import threading
import time
from typing import Any, Mapping, Optional, Sequence

from absl import flags
import grain
import ml_collections
import numpy as np

from upgen import errors
from upgen import paths
from upgen.data import grain_ops
from upgen.data import records
from upgen.data import sources
from upgen.data.spec import DataSpec

PREFETCH_THREADS = 4  # Threads decoding batches ahead in each process (or worker).
PREFETCH_BATCHES = 8  # Batches decoded ahead.
IMAGE_CACHE_BYTES = 1 << 30  # Image folders up to this size (decoded) are cached in memory.
ROLES = {"paired": ("paired",), "image": ("paired", "image"), "text": ("paired", "text")}


def _derive_seed(seed: int, *names: Any) -> int:
  """A 32-bit seed for one random op, derived from config.seed and a name."""
  digest = hashlib.sha256(repr((int(seed),) + names).encode()).digest()
  return int.from_bytes(digest[:4], "little")


def _metadata_spec(meta: Mapping[str, Any], text_seq_len: int) -> DataSpec:
  text, image, pixels = meta["text_tokenizer"], meta["image_tokenizer"], meta.get("pixels")
  return DataSpec(
      text_vocab_size=text["vocab_size"] if text else 0,
      text_pad_id=text["pad_id"] if text else -1,
      text_mask_id=text["mask_id"] if text else -1,
      text_bos_id=text["bos_id"] if text else -1,
      text_eos_id=text["eos_id"] if text else -1,
      text_seq_len=int(text_seq_len),
      image_vocab_size=image["codebook_size"] if image else 0,
      image_grid=tuple(image["grid"]) if image else (0, 0),
      image_size=(pixels or image or {}).get("image_size", 0))


def token_spec(data: ml_collections.ConfigDict) -> DataSpec:
  """The DataSpec of data.dir's records (its metadata.json) with data.text_seq_len.

  data.extra_sources must agree with data.dir: the same tokenizers (identity) wherever both
  have one, hence the same sizes. Errors name the directory and the metadata key.
  """
  main = records.read_metadata(data.dir)
  spec = _metadata_spec(main, int(data.text_seq_len))
  if spec.text_seq_len < 1:
    raise errors.ConfigError(f"config.data.text_seq_len={spec.text_seq_len}: must be >= 1")
  for _, weight, directory in parse_extra_sources(data.get("extra_sources", "")):
    if weight == 0 or directory == data.dir:
      continue
    meta = records.read_metadata(directory)
    for tok in ("text_tokenizer", "image_tokenizer"):
      if meta[tok] is None:
        continue
      if main[tok] is None:
        raise errors.ConfigError(f"config.data.extra_sources: {directory} has a {tok} but "
                                 f"config.data.dir={data.dir} has none to agree with")
      if meta[tok]["identity"] != main[tok]["identity"]:
        raise errors.ConfigError(f"config.data.extra_sources: {directory} was tokenized with a "
                                 f"different {tok} than config.data.dir ({tok}.identity differs)")
  return spec


def parse_extra_sources(spec: str) -> list[tuple[str, float, str]]:
  """config.data.extra_sources "kind:weight:dir,..." -> [(kind, weight, dir)]."""
  out = []
  for item in filter(None, (s.strip() for s in spec.split(","))):
    parts = item.split(":", 2)
    if len(parts) != 3 or parts[0] not in ROLES:
      raise errors.ConfigError(
          f"config.data.extra_sources: {item!r} is not kind:weight:dir with kind "
          f"in {sorted(ROLES)}")
    try:
      weight = float(parts[1])
    except ValueError as e:
      raise errors.ConfigError(f"config.data.extra_sources: {item!r}: weight {parts[1]!r} is not a "
                               f"number") from e
    if weight < 0:
      raise errors.ConfigError(f"config.data.extra_sources: {item!r}: weight must be >= 0")
    out.append((parts[0], weight, parts[2]))
  return out


def _checked_rows(config: ml_collections.ConfigDict, rows: Optional[Sequence[int]]
                  ) -> tuple[int, ...]:
  """The rows of each global batch to load (all when None), checked against the batch size."""
  batch_size = int(config.data.batch_size)
  if batch_size <= 0:
    raise errors.ConfigError(f"config.data.batch_size={batch_size} must be positive")
  rows = tuple(range(batch_size) if rows is None else (int(r) for r in rows))
  if not rows or list(rows) != sorted(set(rows)) or not 0 <= rows[0] <= rows[-1] < batch_size:
    raise errors.DataError(f"rows {rows} are not sorted distinct rows of a batch of "
                           f"config.data.batch_size={batch_size}")
  return rows


def _finish(ds: grain.MapDataset, config: ml_collections.ConfigDict,
            rows: Optional[Sequence[int]], batch_fn: Optional[Any] = None
            ) -> grain.DatasetIterator:
  """This process's rows of each global batch, prefetch (threads, optional worker
  processes) -> iterator."""
  ds = grain_ops.BatchDataset(ds, int(config.data.batch_size), batch_fn or grain_ops.stack,
                              _checked_rows(config, rows))
  it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=PREFETCH_THREADS,
                                               prefetch_buffer_size=PREFETCH_BATCHES))
  num_workers = int(config.data.get("num_workers", 0))
  if num_workers > 0:
    if not flags.FLAGS.is_parsed():  # grain's workers read absl flags (defaults suffice).
      flags.FLAGS.mark_as_parsed()
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
  return iter(it_ds)


@functools.lru_cache(maxsize=16)
def _open_split(directory: str, split: str, metadata_version: Any) -> records.RecordDataSource:
  """Indexed (CRC-verified) records of a split, reused while metadata.json is unchanged, so
  repeated evaluations do not re-read the shards."""
  del metadata_version  # Only part of the cache key.
  return records.RecordDataSource(directory, split)


def _record_source(directory: str, split: str, role: str,
                   config_key: str) -> records.RecordDataSource:
  version = paths.version(paths.join(directory, records.METADATA_FILE))
  src = _open_split(paths.absolute(directory), split, version)
  if src.kind not in ROLES[role]:
    raise errors.DataError(f"{config_key}: {directory} split {split!r} holds {src.kind!r} records, "
                           f"which cannot be used as {role!r}")
  return src


def _token_sources(config: ml_collections.ConfigDict, split: str,
                   extra: bool) -> list[tuple[str, float, records.RecordDataSource]]:
  """[(role, weight, source)] for data.dir (+ extra_sources). The sources' tokenizers were
  checked against data.dir's by `token_spec`."""
  if not config.data.dir:
    raise errors.ConfigError(
        "config.data.dir is empty: set it to a directory written by `upgen tokenize`")
  paired_weight = float(config.data.get("paired_weight", 1.0))
  # data.dir is paired, or text records with no images at all (a language model's data).
  meta = records.read_metadata(config.data.dir)
  text_only = (meta["image_tokenizer"] is None and meta.get("pixels") is None
               and records.split_info(meta, config.data.dir, split)["kind"] == "text")
  specs = [("text" if text_only else "paired", paired_weight, config.data.dir,
            "config.data.dir")]
  if extra:
    specs += [(k, w, d, "config.data.extra_sources")
              for k, w, d in parse_extra_sources(config.data.get("extra_sources", ""))]
  out = [(role, weight, _record_source(directory, split, role, key))
         for role, weight, directory, key in specs if weight != 0 or not extra]
  if not out:
    raise errors.ConfigError("config.data.paired_weight and all extra_sources weights are 0")
  return out


def _batcher(srcs: list[tuple[str, float, records.RecordDataSource]],
             spec: DataSpec, pixels: bool = False) -> grain_ops.TokenBatcher:
  if spec.text_seq_len <= 0:
    raise errors.ConfigError(f"config.data.text_seq_len={spec.text_seq_len} must be positive")
  return grain_ops.TokenBatcher(
      [src for _, _, src in srcs], [role for role, _, _ in srcs],
      image_seq_len=spec.image_seq_len, text_seq_len=spec.text_seq_len,
      pad_id=spec.text_pad_id, image_vocab_size=spec.image_vocab_size,
      text_vocab_size=spec.text_vocab_size, pixels=spec.image_size if pixels else 0)


def make_train_iterator(config: ml_collections.ConfigDict, spec: DataSpec, *,
                        rows: Optional[Sequence[int]] = None,
                        pixels: bool = False) -> grain.DatasetIterator:
  """Infinite iterator of this process's token batches (see the module docstring).

  Batches: image_tokens int32 [b, image_seq_len], text_tokens int32 [b, text_seq_len],
  text_mask bool [b, text_seq_len], has_image bool [b], has_text bool [b], with b = len(rows)
  (rows: sorted rows of each global batch to load; None = all, one process); the sizes
  come from `spec` (`token_spec`). With `pixels`, also pixels uint8 [b, S, S, 3] (S =
  spec.image_size; zeros where has_image is False) decoded from the records' PNGs.
  """
  split = config.data.get("train_split", "train")
  srcs = _token_sources(config, split, extra=True)
  for _, _, src in srcs:
    if not len(src):
      raise errors.DataError(
          f"{paths.join(src.data_dir, records.METADATA_FILE)}: split {split!r} has no records "
          f"(records_per_shard {src.info['records_per_shard']}): nothing to train on; write it "
          "again with `upgen tokenize`, or point config.data.train_split at another split")
  datasets = [grain_ops.EpochShuffle(grain.MapDataset.source(grain_ops.RawRecords(src, i)),
                                     seed=_derive_seed(config.seed, "shuffle", i))
              for i, (_, _, src) in enumerate(srcs)]
  weights = [w for _, w, _ in srcs]
  ds = datasets[0] if len(datasets) == 1 else grain.MapDataset.mix(datasets, weights)
  text_dropout = float(config.data.get("text_dropout", 0.0))
  image_dropout = float(config.data.get("image_dropout", 0.0))
  if not (0 <= text_dropout and 0 <= image_dropout and text_dropout + image_dropout <= 1):
    raise errors.ConfigError(
        f"config.data.text_dropout={text_dropout} and config.data.image_dropout="
        f"{image_dropout} must be >= 0 with a sum <= 1")
  if text_dropout or image_dropout:
    paired = frozenset(i for i, (role, _, _) in enumerate(srcs) if role == "paired")
    ds = ds.random_map(functools.partial(grain_ops.modality_dropout, text_dropout=text_dropout,
                                         image_dropout=image_dropout, paired_sources=paired),
                       seed=_derive_seed(config.seed, "modality_dropout"))
  return _finish(ds, config, rows, _batcher(srcs, spec, pixels))


def _one_pass(ds: grain.MapDataset, config: ml_collections.ConfigDict,
              what: str) -> grain.MapDataset:
  """The first floor(len / batch_size) * batch_size examples (drop remainder, every process
  gets the same number of batches)."""
  batch_size = int(config.data.batch_size)
  usable = len(ds) // batch_size * batch_size
  if usable == 0:
    raise errors.DataError(f"{what} has {len(ds)} examples, fewer than "
                           f"config.data.batch_size={batch_size}")
  return ds[:usable]


def make_eval_iterator(config: ml_collections.ConfigDict, spec: DataSpec, split: str, *,
                       rows: Optional[Sequence[int]] = None,
                       pixels: bool = False) -> grain.DatasetIterator:
  """One deterministic pass over data.dir's `split` in record order, no shuffle, no dropout.

  The last partial global batch is dropped (fewer than config.data.batch_size examples).
  """
  srcs = _token_sources(config, split, extra=False)
  ds = grain.MapDataset.source(grain_ops.RawRecords(srcs[0][2], 0))
  return _finish(_one_pass(ds, config, f"{config.data.dir} split {split!r}"), config, rows,
                 _batcher(srcs, spec, pixels))


class _CachedImages:
  """Decoded-image cache in front of an image source (filled on first access, per process)."""

  def __init__(self, source: sources.ImageFolderSource):
    self.source = source
    self._lock = threading.Lock()
    self._images: Optional[np.ndarray] = None
    self._filled: Optional[np.ndarray] = None

  def __len__(self) -> int:
    return len(self.source)

  def __repr__(self) -> str:
    return f"_CachedImages({self.source!r})"

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    with self._lock:
      if self._images is None:
        size = self.source.image_size
        self._images = np.zeros((len(self.source), size, size, 3), np.uint8)
        self._filled = np.zeros(len(self.source), bool)
    if not self._filled[index]:
      self._images[index] = self.source[index]["image"]
      self._filled[index] = True
    return {"image": self._images[index]}

  def __getstate__(self) -> dict:
    return {"source": self.source}

  def __setstate__(self, state: dict) -> None:
    self.__init__(state["source"])


def _image_only(example: Mapping[str, Any]) -> dict[str, np.ndarray]:
  return {"image": example["image"]}


def make_image_iterator(config: ml_collections.ConfigDict, spec: DataSpec, split: str, *,
                        rows: Optional[Sequence[int]] = None, train: bool = True
                        ) -> grain.DatasetIterator:
  """Batches {"image": uint8 [b, S, S, 3]} from config.data.dir/<split> (ImageFolderSource at
  S = spec.image_size). train: infinite, shuffled per epoch (seed = config.seed);
  else one pass in file order, remainder dropped. Sharded like make_train_iterator."""
  if not config.data.dir:
    raise errors.ConfigError("config.data.dir is empty: set it to an image folder "
                             "(DIR/<split>/captions.jsonl)")
  source = sources.ImageFolderSource(os.path.join(config.data.dir, split), spec.image_size)
  if len(source) * source.image_size ** 2 * 3 <= IMAGE_CACHE_BYTES:
    source = _CachedImages(source)
  ds = grain.MapDataset.source(source)
  if train:
    ds = grain_ops.EpochShuffle(ds, seed=_derive_seed(config.seed, "images", split))
  else:
    ds = _one_pass(ds, config, f"{config.data.dir}/{split}")
  return _finish(ds.map(_image_only), config, rows)


def records_per_second(data_dir: str, split: str, batch_size: int, seconds: float) -> float:
  """Decoded records per second of a shuffled, batched read of data_dir's `split` in this
  process (index building excluded; text padded to the split's max_text_len)."""
  src = records.RecordDataSource(data_dir, split)
  meta = src.metadata
  batcher = grain_ops.TokenBatcher(
      [src], [src.kind], text_seq_len=max(1, src.info["max_text_len"]),
      image_seq_len=int(np.prod(meta["image_tokenizer"]["grid"])) if meta["image_tokenizer"] else 0,
      pad_id=meta["text_tokenizer"]["pad_id"] if meta["text_tokenizer"] else 0,
      image_vocab_size=meta["image_tokenizer"]["codebook_size"] if meta["image_tokenizer"] else 1,
      text_vocab_size=meta["text_tokenizer"]["vocab_size"] if meta["text_tokenizer"] else 1)
  ds = grain_ops.EpochShuffle(grain.MapDataset.source(grain_ops.RawRecords(src, 0)), seed=0)
  it = iter(grain_ops.BatchDataset(ds, batch_size, batcher).to_iter_dataset(
      grain.ReadOptions(num_threads=PREFETCH_THREADS, prefetch_buffer_size=PREFETCH_BATCHES)))
  next(it)  # Warm up the prefetch threads.
  count, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds:
    next(it)
    count += batch_size
  return count / (time.perf_counter() - start)
