"""Examples -> record dicts, one block of a source at a time: what `upgen tokenize` does to
each example between the source and the shard writer (upgen/datasets/tokenize_job.py).

For each batch of `batch_size` examples: read them (threads: decode + resize), set aside the
ones the source cannot give (errors.BadExample, counted in a `Skipped` against
--max-bad-fraction) and the ones a filter drops (`Filters`, counted apart: dropping them is
what the user asked for), then the image tokens (one jitted call per batch), the text
tokens and the PNG bytes of the kept ones.

Filters (all off by default):
  min_side       the image's shorter side before resizing, in pixels ("image_too_small")
  min_chars,     the caption's length in characters, after stripping
  max_chars        ("caption_too_short", "caption_too_long")
  dedup          exact duplicates: the same caption and the same pixels once resized
                 ("duplicate"); within a block here, across blocks at the job's commit
                 through each record's `content_hash`.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import hashlib
import time
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np

from upgen import errors
from upgen.data.images import png_bytes

SKIP_CHECK_AFTER = 1000  # Examples of a block seen before its bad fraction is checked.
FIRST_SKIPPED = 5  # Ids named per reason.
HASH_BYTES = 16  # Of a record's content hash (sha256, truncated): 128 bits.


class Tally:
  """Examples set aside, counted per reason with the first FIRST_SKIPPED ids:
  {reason: {"count": n, "first": [ids]}} as metadata.json stores it."""

  def __init__(self, reasons: Optional[dict[str, dict[str, Any]]] = None):
    self.reasons: dict[str, dict[str, Any]] = {}
    self.count = 0
    self.merge(reasons or {})

  def add(self, reason: str, example_id: str) -> None:
    self.merge({reason: {"count": 1, "first": [example_id]}})

  def merge(self, reasons: dict[str, dict[str, Any]]) -> None:
    """Adds another tally's reasons (in order: its first ids go after these)."""
    for reason, other in reasons.items():
      entry = self.reasons.setdefault(reason, {"count": 0, "first": []})
      entry["count"] += int(other["count"])
      entry["first"] = (entry["first"] + list(other["first"]))[:FIRST_SKIPPED]
      self.count += int(other["count"])

  def summary(self) -> str:
    return "; ".join(f"{reason} {e['count']}: {', '.join(e['first'])}"
                     + (", ..." if e["count"] > len(e["first"]) else "")
                     for reason, e in sorted(self.reasons.items()))


class Skipped(Tally):
  """The examples a source could not give (errors.BadExample); `max_fraction` 0 re-raises
  the first one (curated data: the first bad example stops the job, naming it)."""

  def __init__(self, max_fraction: float = 0.0, desc: str = "tokenize",
               reasons: Optional[dict[str, dict[str, Any]]] = None):
    super().__init__(reasons)
    self.max_fraction, self.desc = max_fraction, desc

  def add_bad(self, e: errors.BadExample) -> None:
    if self.max_fraction == 0:
      raise e
    self.add(e.reason, e.example_id)

  def check(self, seen: int, final: bool = False) -> None:
    """errors.DataError when more than max_fraction of the `seen` examples were skipped
    (checked once SKIP_CHECK_AFTER were seen, and at the end whatever their number)."""
    if (final or seen >= SKIP_CHECK_AFTER) and seen and self.count > self.max_fraction * seen:
      raise errors.DataError(
          f"{self.desc}: {self.count} of {seen} examples skipped ({self.summary()}), above "
          f"--max-bad-fraction {self.max_fraction:g}; fix or remove them, or raise the flag")


@dataclasses.dataclass(frozen=True)
class Filters:
  """What `upgen tokenize` drops on purpose (module docstring); part of the job's identity."""
  min_side: int = 0
  min_chars: int = 0
  max_chars: int = 0  # 0: no bound.
  dedup: bool = False

  def reason(self, example: dict[str, Any]) -> Optional[str]:
    """Why `example` is dropped, or None (duplicates are the caller's: they need state)."""
    if self.min_side and "size" in example and min(example["size"]) < self.min_side:
      return "image_too_small"
    length = len(example["caption"].strip())
    if length < self.min_chars:
      return "caption_too_short"
    if self.max_chars and length > self.max_chars:
      return "caption_too_long"
    return None


def content_hash(example: dict[str, Any]) -> bytes:
  """HASH_BYTES of sha256 over the caption and, where read, the resized pixels."""
  digest = hashlib.sha256(example["caption"].encode("utf-8") + b"\0")
  if "image" in example:
    digest.update(np.ascontiguousarray(example["image"]).tobytes())
  return digest.digest()[:HASH_BYTES]


def _fetch(get: Callable[[int], Any], index: int) -> Any:
  """get(index), or the errors.BadExample it raised (counted by the caller in order)."""
  try:
    return get(index)
  except errors.BadExample as e:
    return e


def _check_ids(ids: np.ndarray, limit: int, what: str, example_id: str) -> None:
  if len(ids) and (ids.min() < 0 or ids.max() >= limit):
    bad = int(ids[(ids < 0) | (ids >= limit)][0])
    raise errors.DataError(
        f"{what} returned id {bad} outside [0, {limit}) for example {example_id!r}")


@dataclasses.dataclass
class Encoders:
  """How a job turns examples into records: what they hold and the tokenizers."""
  kind: str  # records.KINDS
  text_tokenizer: Any
  image_tokenizer: Any
  pixels: bool  # PNG bytes in each record.
  batch_size: int = 64
  filters: Filters = Filters()
  seconds: dict[str, float] = dataclasses.field(default_factory=dict)  # Time per stage.

  def _timed(self, stage: str, fn: Callable[..., Any], *args: Any) -> Any:
    start = time.perf_counter()
    out = fn(*args)
    self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start
    return out

  def _image_tokens(self, examples: list[dict[str, Any]]) -> list[np.ndarray]:
    tok = self.image_tokenizer
    tokens_Bxhxw = np.asarray(tok.encode(np.stack([e["image"] for e in examples])))
    want = (len(examples), *tuple(tok.grid))
    if tokens_Bxhxw.shape != want:
      raise errors.DataError(f"image tokenizer {tok.path}: encode returned shape "
                             f"{tokens_Bxhxw.shape}, expected {want}")
    return list(tokens_Bxhxw.reshape(len(examples), -1).astype(np.int64))

  def records(self, source: Any, indices: Sequence[int], skipped: Skipped, filtered: Tally,
              pool: concurrent.futures.Executor,
              on_batch: Callable[[int], None] = lambda n: None) -> Iterator[dict[str, Any]]:
    """Record dicts (image_tokens, text_tokens, image_png, caption, id, content_hash) of the
    examples of `source` at `indices` that are neither skipped nor filtered, in order."""
    get = source.__getitem__
    if self.kind == "text":
      get = lambda i: {"caption": source.caption(i), "id": source.example_id(i)}  # noqa: E731
    seen_hashes: set[bytes] = set()
    for start in range(0, len(indices), self.batch_size):
      batch = indices[start:start + self.batch_size]
      examples = []
      for got in self._timed("read", lambda: list(pool.map(functools.partial(_fetch, get),
                                                           batch))):
        if isinstance(got, errors.BadExample):
          skipped.add_bad(got)
          continue
        reason = self.filters.reason(got)
        if reason is None and self.filters.dedup:
          got["content_hash"] = content_hash(got)
          reason = "duplicate" if got["content_hash"] in seen_hashes else None
          seen_hashes.add(got["content_hash"])
        if reason is None:
          examples.append(got)
        else:
          filtered.add(reason, got["id"])
      skipped.check(start + len(batch))
      on_batch(len(batch))
      yield from self._encoded(examples, skipped, pool)

  def _encoded(self, examples: list[dict[str, Any]], skipped: Skipped,
               pool: concurrent.futures.Executor) -> Iterator[dict[str, Any]]:
    if not examples:
      return
    none = [None] * len(examples)
    images = self.kind != "text"
    pngs = (self._timed("png", lambda: list(pool.map(png_bytes, [e["image"] for e in examples])))
            if images and self.pixels else none)
    image_tokens = (self._timed("image_tokens", self._image_tokens, examples)
                    if images and self.image_tokenizer is not None else none)
    text_tokens = none
    if self.kind != "image":
      text_tokens = [np.asarray(t, np.int64) for t in self._timed(
          "text_tokens", self.text_tokenizer.encode_batch, [e["caption"] for e in examples])]
    for example, image_ids, text_ids, png in zip(examples, image_tokens, text_tokens, pngs):
      if image_ids is not None:
        _check_ids(image_ids, self.image_tokenizer.codebook_size, "image tokenizer",
                   example["id"])
      if text_ids is not None:
        _check_ids(text_ids, self.text_tokenizer.vocab_size, "text tokenizer", example["id"])
        if len(text_ids) == 0:
          skipped.add_bad(errors.BadExample(
              f"text tokenizer returned no tokens for example {example['id']!r} (caption "
              f"{example['caption']!r})", reason="no_text_tokens", example_id=example["id"]))
          continue
      yield {"image_tokens": image_ids, "text_tokens": text_ids, "image_png": png,
             "caption": example["caption"], "id": example["id"],
             "content_hash": example.get("content_hash")}
