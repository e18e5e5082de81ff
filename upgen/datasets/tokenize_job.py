"""`upgen tokenize` as a job: resumable, and shared out over many processes.

Shards. Each split's examples are cut into contiguous blocks, one output shard per block
(`{split}-{i:05d}-of-{n:05d}.tfrecord`). What a shard holds depends on the source, its
block and the job's settings only, never on how many processes ran or in which order: N
processes write byte for byte the shards one process writes.

Staging and resuming. Shards are written under OUT/.tokenize-JOB/ (JOB: a hash of the
sources' identities, the tokenizers, what the records hold, the filters and the shard
counts): each under a temporary name, renamed when complete; then SHARD.hashes (its
records' content hashes, with --dedup) and last its manifest entry SHARD.json (records,
sha256, max text length, id range, the examples skipped and filtered), each atomically. A
shard with an entry is done: the same command started again skips it and redoes the others,
the one a kill cut short among them. Another command has another JOB and starts afresh.

Processes. Process p of P writes shards p, p+P, ... of the job's list (every split's shards
in order); all meet at a barrier (runtime/distributed.py); process 0 commits:
 1. --dedup: a record whose content hash an earlier shard of the job already holds is
    dropped from its staged shard (rewritten under a new name, which its entry then names);
 2. per split, the examples skipped as bad are checked against --max-bad-fraction (each
    shard checks its own share as it goes; a strict job stops at the first);
 3. the staged shards are renamed into OUT and metadata.json is written: the commit point.
    Readers see the new records from here; the shards an older metadata.json named and this
    one does not are deleted after it;
 4. the staging folder is removed, with those of jobs into OUT that never finished (OUT
    holds one job's records: theirs would replace these).
A failure or kill before step 3 leaves OUT's records and metadata as they were; a kill
within step 3 is finished by the next start (a shard already in OUT with its entry's sha256
counts as moved).
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import math
import os
import time
from typing import Any, Iterable, Mapping, Optional

import jax
import numpy as np

from upgen import errors
from upgen import paths
from upgen.data import example_proto
from upgen.data import records
from upgen.data import sources
from upgen.data import tfrecord
from upgen.datasets import tokenize_examples as examples_lib
from upgen.runtime import distributed
from upgen.runtime import progress as progress_lib

RECORDS_PER_SHARD = 10_000  # Default shard size when --num-shards is not given.
STAGING_PREFIX = ".tokenize-"


@dataclasses.dataclass(frozen=True)
class Unit:
  """One output shard: the examples [start, stop) of its split's source, or with `parts`
  the examples of the source's parts [start, stop)."""
  split: str
  index: int
  num_shards: int
  start: int
  stop: int
  parts: bool = False

  @property
  def name(self) -> str:
    return records.shard_name(self.split, self.index, self.num_shards)


def plan(split_sources: Mapping[str, Any], num_shards: Optional[int] = None) -> list[Unit]:
  """Every split's shards, in split order: `num_shards` contiguous blocks of (near) equal
  size per split, or one per RECORDS_PER_SHARD examples. A source in parts (`num_parts`,
  `part(i)`: tar shards) is cut into blocks of parts, by default one shard per part."""
  units = []
  for split, source in split_sources.items():
    parts = hasattr(source, "num_parts")
    size = source.num_parts if parts else len(source)
    n = num_shards or (size if parts else max(1, math.ceil(size / RECORDS_PER_SHARD)))
    edges = [i * size // n for i in range(n + 1)]
    units += [Unit(split, i, n, edges[i], edges[i + 1], parts) for i in range(n)]
  return units


def unit_source(source: Any, unit: Unit) -> tuple[Any, range]:
  """(source, indices) of the unit's examples (its parts opened here)."""
  if not unit.parts:
    return source, range(unit.start, unit.stop)
  joined = sources.ConcatSource([source.part(i) for i in range(unit.start, unit.stop)])
  return joined, range(len(joined))


@dataclasses.dataclass
class Job:
  """A tokenize job: {split: source} into out_dir with `encoders` (see module docstring)."""
  out_dir: str
  split_sources: Mapping[str, Any]
  encoders: examples_lib.Encoders
  num_shards: Optional[int] = None
  max_bad_fraction: float = 0.0
  replace_metadata: bool = False  # Its first split replaces metadata made with other tokenizers.
  progress: bool = False
  read_threads: int = 0  # Threads reading, decoding and resizing (0: min(16, cores)).
  summary: dict[str, Any] = dataclasses.field(default_factory=dict)  # run()'s, once run.

  def __post_init__(self):
    enc = self.encoders
    self.text_info = (records.text_tokenizer_info(enc.text_tokenizer)
                      if enc.text_tokenizer is not None else None)
    self.image_info = (records.image_tokenizer_info(enc.image_tokenizer)
                       if enc.image_tokenizer is not None else None)
    self.pixel_info = None
    if enc.pixels and enc.kind != "text":
      size = {getattr(s, "image_size", None) for s in self.split_sources.values()}
      self.pixel_info = {"image_size": int(size.pop()), "format": "png"}
    self.units = plan(self.split_sources, self.num_shards)
    key = json.dumps({
        "format": records.FORMAT_VERSION, "kind": enc.kind, "pixels": self.pixel_info,
        "text_tokenizer": self.text_info, "image_tokenizer": self.image_info,
        "filters": dataclasses.asdict(enc.filters),
        "splits": [[split, sources.identity(source)] for split, source in
                   self.split_sources.items()],
        "shards": [[u.name, u.start, u.stop] for u in self.units]}, sort_keys=True, default=str)
    self.key = hashlib.sha256(key.encode()).hexdigest()[:16]
    self.staging = paths.join(self.out_dir, STAGING_PREFIX + self.key)

  def entry_path(self, unit: Unit) -> str:
    return paths.join(self.staging, unit.name + ".json")


  def entry(self, unit: Unit) -> Optional[dict[str, Any]]:
    """The unit's manifest entry when its shard is done (staged, or moved into out_dir)."""
    path = self.entry_path(unit)
    if not paths.exists(path):
      return None
    try:
      entry = json.loads(paths.read_bytes(path))
    except (json.JSONDecodeError, UnicodeDecodeError):
      return None  # Written atomically, so never half; unreadable all the same: redo it.
    if paths.exists(paths.join(self.staging, entry["file"])):
      return entry
    final = paths.join(self.out_dir, unit.name)
    if paths.exists(final) and records.file_sha256(final) == entry["sha256"]:
      return entry  # Moved by a commit that was cut short.
    return None


def _write_json(path: str, obj: Any) -> None:
  paths.write_atomic(path, json.dumps(obj, indent=1, sort_keys=True) + "\n")


def _write_shard(path: str, pairs: Iterable[tuple[dict[str, Any], bytes]]
                 ) -> tuple[dict[str, Any], list[bytes]]:
  """Streams (record, its serialized bytes) into `path` (under a temporary name, renamed when
  complete). Returns the entry's fields (records, max_text_len, id_range, sha256) and the
  records' content hashes."""
  stats = {"records": 0, "max_text_len": 0, "id_range": {}}
  hashes = []
  tmp = path + ".tmp"
  writer = tfrecord.TFRecordWriter(tmp)
  try:
    for rec, blob in pairs:
      stats["records"] += 1
      text_tokens = rec.get("text_tokens")
      stats["max_text_len"] = max(stats["max_text_len"],
                                  0 if text_tokens is None else len(text_tokens))
      records.widen_id_range(stats["id_range"], rec)
      hashes.append(rec.get("content_hash") or b"")
      writer.write(blob)
  finally:
    writer.close()
  paths.replace(tmp, path)
  stats["sha256"] = records.file_sha256(path)
  return stats, hashes


def _write_unit(job: Job, unit: Unit, recs: Iterable[dict[str, Any]], seen: int,
                skipped: examples_lib.Skipped, filtered: examples_lib.Tally) -> dict[str, Any]:
  """Tokenizes and stages one shard, then its manifest entry (the mark that it is done)."""
  kind = job.encoders.kind
  pairs = ((rec, records.encode_record(_same_kind(rec, kind, unit))) for rec in recs)
  stats, hashes = _write_shard(paths.join(job.staging, unit.name), pairs)
  entry = {"file": unit.name, "kind": kind, "seen": seen, **stats,
           "skipped": skipped.reasons, "filtered": filtered.reasons}
  if job.encoders.filters.dedup:
    entry["hashes"] = unit.name + ".hashes"
    paths.write_atomic(paths.join(job.staging, entry["hashes"]), b"".join(hashes))
  _write_json(job.entry_path(unit), entry)
  return entry


def _same_kind(rec: dict[str, Any], kind: str, unit: Unit) -> dict[str, Any]:
  got = records.example_kind(rec)
  if got != kind:
    raise errors.DataError(f"split {unit.split!r} is {kind!r} but example {rec.get('id')!r} "
                           f"is {got!r}")
  return rec


def run(job: Job, process_index: int = 0, process_count: int = 1) -> dict[str, Any]:
  """Writes this process's shards that are not done yet. Returns {"examples", "resumed",
  "seconds", "stages"} for the job's summary."""
  mine = job.units[process_index::process_count]
  todo = [u for u in mine if job.entry(u) is None]
  paths.makedirs(job.staging)
  start = time.perf_counter()
  total = sum(u.stop - u.start for u in todo if not u.parts)  # Parts: counted once opened.
  workers = job.read_threads or min(16, os.cpu_count() or 1)
  with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool, \
      progress_lib.bar(total, desc=f"tokenize (process {process_index})" if process_count > 1
                       else "tokenize", disable=not job.progress, unit="ex") as bar:
    for unit in todo:
      source, indices = unit_source(job.split_sources[unit.split], unit)
      if unit.parts:
        total += len(indices)
        bar.total = total
        bar.refresh()
      skipped = examples_lib.Skipped(job.max_bad_fraction, desc=f"shard {unit.name}")
      filtered = examples_lib.Tally()
      recs = job.encoders.records(source, indices, skipped, filtered, pool, on_batch=bar.update)
      _write_unit(job, unit, recs, len(indices), skipped, filtered)
  return {"examples": total, "resumed": len(mine) - len(todo), "shards": len(mine),
          "seconds": time.perf_counter() - start, "stages": dict(job.encoders.seconds)}


def _read_hashes(job: Job, entry: dict[str, Any]) -> np.ndarray:
  path, count = paths.join(job.staging, entry["hashes"]), entry["records"]
  data = paths.read_bytes(path)
  if len(data) != count * examples_lib.HASH_BYTES:
    raise errors.DataError(f"{path}: {len(data)} bytes for {count} records; remove "
                           f"{job.staging} and run the job again")
  return np.frombuffer(data, np.uint8).reshape(count, examples_lib.HASH_BYTES)


def _dedup(job: Job, entries: list[dict[str, Any]]) -> None:
  """Step 1 of the commit: records whose content an earlier shard holds are dropped."""
  counts = [e["records"] for e in entries]
  hashes_Nx16 = np.concatenate([_read_hashes(job, e) for e in entries])
  if not len(hashes_Nx16):
    return
  _, first = np.unique(hashes_Nx16.view(f"V{examples_lib.HASH_BYTES}").reshape(-1),
                       return_index=True)
  keep_N = np.zeros(len(hashes_Nx16), bool)
  keep_N[first] = True
  ends = np.cumsum(counts)
  for unit, entry, end, count in zip(job.units, entries, ends, counts):
    keep = keep_N[end - count:end]
    if keep.all():
      continue
    shard = tfrecord.IndexedTFRecordFile(paths.join(job.staging, entry["file"]))
    kept, filtered = [], examples_lib.Tally(entry["filtered"])
    for i in range(count):
      blob = shard[i]
      features = example_proto.decode_example(blob)
      rec = {"text_tokens": features["text_tokens"], "image_tokens": features["image_tokens"]}
      if keep[i]:
        kept.append((rec, blob))
      else:
        filtered.add("duplicate", features["id"][0].decode("utf-8", "replace"))
    # New names, which the entry names last: a kill on the way leaves the old pair in force.
    new_file, new_hashes = unit.name + ".dedup", unit.name + ".dedup.hashes"
    stats, _ = _write_shard(paths.join(job.staging, new_file), kept)
    paths.write_atomic(paths.join(job.staging, new_hashes),
                       hashes_Nx16[end - count:end][keep].tobytes())
    old = (entry["file"], entry["hashes"])
    entry.update(stats, file=new_file, hashes=new_hashes, filtered=filtered.reasons)
    _write_json(job.entry_path(unit), entry)
    for name in set(old) - {new_file, new_hashes}:
      paths.remove(paths.join(job.staging, name))


def commit(job: Job) -> dict[str, Any]:
  """Steps 1-4 of the module docstring (process 0, once every shard is done)."""
  entries = [job.entry(u) for u in job.units]
  missing = [u.name for u, e in zip(job.units, entries) if e is None]
  if missing:
    raise errors.DataError(f"{job.staging}: shard(s) {', '.join(missing[:5])} not written; run "
                           "the same command again to write them")
  if job.encoders.filters.dedup:
    _dedup(job, entries)
  by_split: dict[str, list[tuple[Unit, dict[str, Any]]]] = {}
  for unit, entry in zip(job.units, entries):
    by_split.setdefault(unit.split, []).append((unit, entry))
  infos = {split: _split_info(job, split, pairs) for split, pairs in by_split.items()}
  meta = {}
  for i, (split, pairs) in enumerate(by_split.items()):
    for unit, entry in pairs:
      staged = paths.join(job.staging, entry["file"])
      if paths.exists(staged):
        paths.replace(staged, paths.join(job.out_dir, unit.name))
    meta = records.update_metadata(job.out_dir, split, infos[split], job.text_info,
                                   job.image_info, replace=job.replace_metadata and i == 0,
                                   pixels=job.pixel_info)
  for name in paths.list_names(job.out_dir):  # Ours, and any of jobs that never finished.
    if name.startswith(STAGING_PREFIX):
      paths.remove_tree(paths.join(job.out_dir, name))
  return meta


def _split_info(job: Job, split: str, pairs: list[tuple[Unit, dict[str, Any]]]
                ) -> dict[str, Any]:
  """The split's metadata.json entry from its shards' entries; the bad fraction checked."""
  skipped = examples_lib.Skipped(job.max_bad_fraction, desc=f"split {split!r}")
  filtered = examples_lib.Tally()
  id_range: dict[str, list[int]] = {}
  for _, entry in pairs:
    skipped.merge(entry["skipped"])
    filtered.merge(entry["filtered"])
    for key, (low, high) in entry["id_range"].items():
      old = id_range.get(key, [low, high])
      id_range[key] = [min(old[0], low), max(old[1], high)]
  skipped.check(sum(e["seen"] for _, e in pairs), final=True)
  if not sum(e["records"] for _, e in pairs):
    raise errors.DataError(f"split {split!r}: no examples to write"
                           + (f" ({filtered.summary()})" if filtered.count else ""))
  info = {"kind": job.encoders.kind, "shards": [u.name for u, _ in pairs],
          "records_per_shard": [e["records"] for _, e in pairs],
          "sha256": [e["sha256"] for _, e in pairs],
          "max_text_len": max(e["max_text_len"] for _, e in pairs), "id_range": id_range}
  if skipped.count:
    info["skipped"] = skipped.reasons
  if filtered.count:
    info["filtered"] = filtered.reasons
  return info


def run_job(job: Job) -> Optional[dict[str, Any]]:
  """The whole job on every process of this jax job: run, barrier, commit on process 0.
  Returns the metadata (process 0) or None, and the run's summary as `job.summary`."""
  records.compatible_splits(job.out_dir, next(iter(job.split_sources)), job.text_info,
                            job.image_info, job.replace_metadata, job.pixel_info)
  index, count = jax.process_index(), jax.process_count()
  job.summary = run(job, index, count)
  distributed.barrier(f"upgen-tokenize-{job.key}-written")
  meta = commit(job) if index == 0 else None
  distributed.barrier(f"upgen-tokenize-{job.key}-committed")
  return meta
