"""grain MapDataset building blocks of the input pipelines (upgen/data/pipeline.py).

  RawRecords     source of serialized records tagged with their source id and index
  EpochShuffle   infinite repetition, a fresh seeded permutation per epoch
  BatchDataset   batches read with one `_getitems` call and combined by a batch_fn
  TokenBatcher   batch_fn: serialized records -> the families.py "tokens" batch, all varints
                 of a batch decoded in one vectorized pass

grain 0.2's own shuffle() calls a 15-50 us index_shuffle per element and its batch() reads
element by element through per-element bookkeeping; together that cost more than decoding a
record, hence EpochShuffle and BatchDataset.
"""
from __future__ import annotations

import io
import sys
from typing import Any, Mapping, Optional, Sequence

import grain
import numpy as np
from PIL import Image

from upgen import errors
from upgen.data import example_proto
from upgen.data import images
from upgen.data import records

DROP_NONE, DROP_TEXT, DROP_IMAGE = 0, 1, 2


class RawRecords:
  """Pipeline elements before batching: {"source", "index", "data" (serialized), "drop"}."""

  def __init__(self, source: records.RecordDataSource, source_id: int):
    self.source, self.source_id = source, source_id

  def __len__(self) -> int:
    return len(self.source)

  def __repr__(self) -> str:
    return f"RawRecords({self.source!r}, source_id={self.source_id})"

  def __getitem__(self, index: int) -> dict[str, Any]:
    return {"source": self.source_id, "index": int(index), "data": self.source.read(index),
            "drop": DROP_NONE}

  def _getitems(self, indices: Sequence[int]) -> list[dict[str, Any]]:
    """Batched read (grain calls this once per batch instead of __getitem__ per element;
    records in cloud storage are then fetched with concurrent ranged reads)."""
    datas = self.source.read_many(indices)
    return [{"source": self.source_id, "index": int(i), "data": data, "drop": DROP_NONE}
            for i, data in zip(indices, datas)]


class EpochShuffle(grain.MapDataset):
  """Infinite repetition of `parent`, each epoch in its own seeded random order.

  Element i is parent[perm_e[i mod n]] with e = i // n and perm_e = a permutation of range(n)
  drawn from np.random.default_rng([seed, e]) (cached for the current and previous epoch).
  Used instead of grain's shuffle().repeat(), whose per-element index_shuffle call costs
  15-50 us, as much as decoding a record; this one maps a whole batch of indices at once.
  """

  def __init__(self, parent: grain.MapDataset, seed: int):
    super().__init__(parent)
    self._n, self._seed = len(parent), int(seed)
    if self._n == 0:
      raise errors.DataError(f"cannot shuffle an empty dataset ({parent})")
    self._perms: dict[int, np.ndarray] = {}

  def __len__(self) -> int:
    return sys.maxsize

  def __str__(self) -> str:
    return f"EpochShuffle(n={self._n}, seed={self._seed})"

  def _perm(self, epoch: int) -> np.ndarray:
    perm = self._perms.get(epoch)
    if perm is None:
      perm = np.random.default_rng([self._seed, epoch]).permutation(self._n)
      self._perms = {e: p for e, p in self._perms.items() if e == epoch - 1}
      self._perms[epoch] = perm
    return perm

  def _parent_indices(self, indices: Sequence[int]) -> list[int]:
    epochs_B, pos_B = np.divmod(np.asarray(indices, np.int64), self._n)
    out_B = np.empty_like(pos_B)
    for epoch in np.unique(epochs_B).tolist():
      sel = epochs_B == epoch
      out_B[sel] = self._perm(epoch)[pos_B[sel]]
    return out_B.tolist()

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    return self._parent[self._parent_indices([index])[0]]

  def _getitems(self, indices: Sequence[int]) -> Sequence[Any]:
    return self._parent._getitems(self._parent_indices(indices))  # pylint: disable=protected-access

  def __getstate__(self) -> dict:
    return {**self.__dict__, "_perms": {}}


class BatchDataset(grain.MapDataset):
  """Batches of `batch_size` consecutive elements (remainder dropped), fetched with one
  `_getitems` call down the pipeline (grain 0.2's own batch() reads element by element,
  paying its per-element bookkeeping for each) and combined by `batch_fn`.

  `rows` (sorted, in [0, batch_size)) keeps only those rows of every batch: batch i is the
  elements i * batch_size + r for r in rows. A process loads the rows of each global batch
  that its devices hold.
  """

  def __init__(self, parent: grain.MapDataset, batch_size: int, batch_fn: Any,
               rows: Optional[Sequence[int]] = None):
    super().__init__(parent)
    self._batch_size, self._batch_fn = batch_size, batch_fn
    self._rows = tuple(range(batch_size) if rows is None else rows)

  def __len__(self) -> int:
    return len(self._parent) // self._batch_size

  def __str__(self) -> str:
    return f"BatchDataset(batch_size={self._batch_size}, rows={len(self._rows)})"

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    start = index * self._batch_size
    indices = [start + r for r in self._rows]
    return self._batch_fn(self._parent._getitems(indices))  # pylint: disable=protected-access


def stack(elements: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
  return {key: np.stack([e[key] for e in elements]) for key in elements[0]}


def modality_dropout(element: dict[str, Any], rng: np.random.Generator, *, text_dropout: float,
                     image_dropout: float, paired_sources: frozenset) -> dict[str, Any]:
  """Marks a paired example to be shown image-only (p=text_dropout) or text-only
  (p=image_dropout)."""
  if element["source"] not in paired_sources:
    return element
  u = rng.random()
  drop = DROP_NONE
  if u < text_dropout:
    drop = DROP_TEXT
  elif u < text_dropout + image_dropout:
    drop = DROP_IMAGE
  return {**element, "drop": drop}


def _decode_segments(payloads: list[bytes]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Packed varint payloads -> (all values int64, count per payload, bad payload mask)."""
  lens_B = np.array([len(p) for p in payloads], np.int64)
  raw_T = np.frombuffer(b"".join(payloads), np.uint8)
  ends_B = np.cumsum(lens_B)
  # A payload must end on a varint's last byte, or values would run into the next payload.
  bad_B = (lens_B > 0) & (raw_T[np.maximum(ends_B - 1, 0)] >= 0x80) if len(raw_T) else lens_B < 0
  if bad_B.any():
    return np.zeros(0, np.int64), np.zeros_like(lens_B), bad_B
  term_cum = np.concatenate([[0], np.cumsum(raw_T < 0x80)])
  counts_B = term_cum[ends_B] - term_cum[ends_B - lens_B]
  return example_proto.decode_varints(raw_T.tobytes()), counts_B, bad_B


class TokenBatcher:
  """grain batch_fn: serialized records -> a batch of the families.py "tokens" contract.

  All varints of a batch are decoded in one vectorized pass. Errors (bad ids, wrong image
  length, missing text) name the shard file and the record index.
  """

  def __init__(self, sources: list[records.RecordDataSource], roles: list[str], *,
               image_seq_len: int, text_seq_len: int, pad_id: int, image_vocab_size: int,
               text_vocab_size: int, pixels: int = 0):
    self.sources, self.roles = sources, roles
    self.image_seq_len, self.text_seq_len, self.pad_id = image_seq_len, text_seq_len, pad_id
    self.limits = {"image_tokens": image_vocab_size, "text_tokens": text_vocab_size}
    self.pixels = pixels  # > 0: also decode each record's image_png, pixels x pixels.

  def _where(self, element: Mapping[str, Any]) -> str:
    return self.sources[element["source"]].where(element["index"])

  def _spans(self, element: Mapping[str, Any]) -> dict[str, tuple[str, int, int]]:
    try:
      return example_proto.feature_spans(element["data"])
    except example_proto.ProtoDecodeError as e:
      raise errors.DataError(f"{self._where(element)}: not a valid tf.train.Example: {e}") from e

  def _image(self, element: Mapping[str, Any]) -> np.ndarray:
    """The record's image_png, decoded: uint8 pixels x pixels x 3."""
    data = element["data"]
    kind, start, end = self._spans(element).get("image_png", (None, 0, 0))
    values = example_proto.decode_list(data, start, end, "bytes") if kind == "bytes" else []
    if len(values) != 1:
      raise errors.DataError(f"{self._where(element)}: feature 'image_png' missing or not a "
                             "single bytes value (records written without --pixels?)")
    try:
      with Image.open(io.BytesIO(values[0])) as image:
        image_HxWx3 = np.asarray(images.as_rgb(image, f"{self._where(element)}: image_png"),
                                 np.uint8)
    except errors.UserError:
      raise
    except (OSError, SyntaxError, ValueError) as e:
      raise errors.DataError(f"{self._where(element)}: image_png is not a readable PNG "
                             f"({e})") from e
    if image_HxWx3.shape != (self.pixels, self.pixels, 3):
      raise errors.DataError(f"{self._where(element)}: image_png is {image_HxWx3.shape[1]}x"
                             f"{image_HxWx3.shape[0]}, metadata.json pixels.image_size says "
                             f"{self.pixels}")
    return image_HxWx3

  def _payloads(self, element: Mapping[str, Any]) -> tuple[bytes, bytes]:
    """Packed varint bytes of (image_tokens, text_tokens) of one serialized record."""
    data = element["data"]
    spans = self._spans(element)
    out = []
    for key in ("image_tokens", "text_tokens"):
      kind, start, end = spans.get(key, (None, 0, 0))
      if kind != "int64":
        raise errors.DataError(
            f"{self._where(element)}: feature {key!r} missing or not an int64 list")
      span = example_proto.packed_payload(data, start, end)
      if span is None:  # Unpacked (another writer): re-encode packed.
        out.append(example_proto.encode_varints(example_proto.decode_example(data)[key]))
      else:
        out.append(data[span[0]:span[1]])
    return out[0], out[1]

  def _ids(self, elements: list, payloads: list[bytes],
           key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(values, count per record, first value's offset per record), range-checked."""
    values_T, counts_B, bad_B = _decode_segments(payloads)
    if bad_B.any():
      where = self._where(elements[int(np.argmax(bad_B))])
      raise errors.DataError(f"{where}: {key} ends inside a varint")
    starts_B = np.cumsum(counts_B) - counts_B
    limit = self.limits[key]
    if len(values_T) and values_T.view(np.uint64).max() >= limit:
      first_bad = int(np.argmax((values_T < 0) | (values_T >= limit)))
      record = int(np.searchsorted(starts_B + counts_B, first_bad, side="right"))
      raise errors.DataError(
          f"{self._where(elements[record])}: {key} id {int(values_T[first_bad])} "
          f"outside the vocabulary [0, {limit})")
    return values_T, counts_B, starts_B

  def __call__(self, elements: list[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    roles = [self.roles[e["source"]] for e in elements]
    drop_B = np.array([e["drop"] for e in elements])
    image_payloads, text_payloads = zip(*(self._payloads(e) for e in elements))
    image_T, image_counts_B, image_starts_B = self._ids(elements, image_payloads, "image_tokens")
    text_T, text_counts_B, text_starts_B = self._ids(elements, text_payloads, "text_tokens")
    want_image_B = np.array([r != "text" for r in roles])
    want_text_B = np.array([r != "image" for r in roles])
    bad_image_B = want_image_B & (image_counts_B != self.image_seq_len)
    if bad_image_B.any():
      i = int(np.argmax(bad_image_B))
      raise errors.DataError(f"{self._where(elements[i])}: {int(image_counts_B[i])} image tokens, "
                             f"expected image_seq_len={self.image_seq_len}")
    bad_text_B = want_text_B & (text_counts_B == 0)
    if bad_text_B.any():
      raise errors.DataError(f"{self._where(elements[int(np.argmax(bad_text_B))])}: no text tokens")
    has_image_B = want_image_B & (drop_B != DROP_IMAGE)
    has_text_B = want_text_B & (drop_B != DROP_TEXT)
    batch, li, lt = len(elements), self.image_seq_len, self.text_seq_len
    image_BxLi = np.zeros((batch, li), np.int32)
    image_BxLi[has_image_B] = image_T[image_starts_B[has_image_B][:, None] + np.arange(li)]
    n_B = np.where(has_text_B, np.minimum(text_counts_B, lt), 0)
    text_BxLt = np.full((batch, lt), self.pad_id, np.int32)
    text_mask_BxLt = np.arange(lt)[None, :] < n_B[:, None]
    rows, cols = np.nonzero(text_mask_BxLt)
    text_BxLt[rows, cols] = text_T[text_starts_B[rows] + cols]
    batch = {"image_tokens": image_BxLi, "text_tokens": text_BxLt, "text_mask": text_mask_BxLt,
             "has_image": has_image_B, "has_text": has_text_B}
    if self.pixels:
      pixels_BxSxSx3 = np.zeros((len(elements), self.pixels, self.pixels, 3), np.uint8)
      for row in np.nonzero(has_image_B)[0]:
        pixels_BxSxSx3[row] = self._image(elements[row])
      batch["pixels"] = pixels_BxSxSx3
    return batch
