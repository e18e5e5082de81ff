"""`DataSpec`: the sizes the data fixes, passed to a model family as an argument.

A reader (upgen/data/readers.py) builds it from what it reads: vocabulary sizes, special
ids and the image token grid from the records' metadata.json, the caption length and the
image resolution from config.data. The trainer saves it beside config.json as
`data_spec.json`, so a run directory alone says what its model was built for, and a resumed
run whose data changed shape is refused by name.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping

from upgen import errors
from upgen import rundir


@dataclasses.dataclass(frozen=True)
class DataSpec:
  """Data-derived sizes; 0 (and -1 for ids) where the data has no such part."""
  text_vocab_size: int = 0  # Text tokenizer vocabulary (incl. specials); 0: no text tokens.
  text_pad_id: int = -1  # The text tokenizer's [PAD] id.
  text_mask_id: int = -1  # Its [MASK] id (-1: it has none).
  text_bos_id: int = -1  # Its begin-of-sequence id (BART's <s>; -1: none).
  text_eos_id: int = -1  # Its end-of-sequence id (BART's </s>; -1: none).
  text_seq_len: int = 0  # Caption tokens per example (config.data.text_seq_len).
  image_vocab_size: int = 0  # Image tokenizer codebook size; 0: no image tokens.
  image_grid: tuple[int, int] = (0, 0)  # Image token grid (rows, columns), raster order.
  image_size: int = 0  # Pixels per side of images the reader delivers (0: none).

  def __post_init__(self):
    object.__setattr__(self, "image_grid", tuple(int(v) for v in self.image_grid))
    if len(self.image_grid) != 2:
      raise errors.DataError(f"data spec image_grid={self.image_grid}: expected (rows, columns)")

  @property
  def image_seq_len(self) -> int:
    return self.image_grid[0] * self.image_grid[1]

  @property
  def image_grid_width(self) -> int:
    return self.image_grid[1]

  def token_sizes(self, where: str = "the data") -> dict[str, int]:
    """The sizes a token family's model is built with (image and text tokenizers both
    needed; the error says which one `where` lacks)."""
    if not self.image_vocab_size or not self.image_seq_len:
      raise errors.DataError(f"{where} has no image tokenizer (metadata.json image_tokenizer is "
                             "null): a token family needs image tokens")
    if not self.text_vocab_size:
      raise errors.DataError(f"{where} has no text tokenizer (metadata.json text_tokenizer is "
                             "null): a token family needs text tokens")
    if self.text_seq_len < 1:
      raise errors.ConfigError(f"config.data.text_seq_len={self.text_seq_len}: must be >= 1")
    return {"image_vocab_size": self.image_vocab_size, "image_seq_len": self.image_seq_len,
            "image_grid_width": self.image_grid_width, "text_vocab_size": self.text_vocab_size,
            "text_seq_len": self.text_seq_len, "text_pad_id": self.text_pad_id,
            "text_mask_id": self.text_mask_id}

  def pixel_sizes(self, family: str) -> dict[str, int]:
    """The sizes a family that reads pixels and captions is built with (an error says which
    the records lack, naming `family`, e.g. "a CLIP scorer")."""
    if not self.image_size:
      raise errors.DataError(f"the data carries no pixels: {family} reads images "
                             "(`upgen tokenize --pixels`)")
    if not self.text_vocab_size:
      raise errors.DataError(f"the data has no text tokenizer: {family} reads captions")
    return {"image_size": self.image_size, "text_vocab_size": self.text_vocab_size,
            "text_seq_len": self.text_seq_len, "text_pad_id": max(self.text_pad_id, 0)}

  def special_ids(self, *names: str, where: str = "the data's text tokenizer") -> dict[str, int]:
    """{"text_<name>_id": id} for the named special tokens ("bos", "eos", ...), each checked
    to exist (an error names the missing one)."""
    out = {}
    for name in names:
      value = getattr(self, f"text_{name}_id")
      if not 0 <= value < self.text_vocab_size:
        raise errors.DataError(f"{where} has no {name} token (text_{name}_id={value}); this "
                               f"family needs one")
      out[f"text_{name}_id"] = value
    return out

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

  @classmethod
  def from_dict(cls, raw: Mapping[str, Any], where: str = rundir.SPEC_FILE) -> "DataSpec":
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
      raise errors.DataError(f"{where}: unknown key(s) {unknown}; a data spec has {sorted(names)}")
    return cls(**raw)

  def differences(self, other: "DataSpec") -> list[str]:
    """Field names whose values differ, skipping those this spec leaves at their default
    (unknown when it was written: a field added later, a size a migration could not read)."""
    return [f.name for f in dataclasses.fields(self)
            if getattr(self, f.name) != f.default
            and getattr(self, f.name) != getattr(other, f.name)]
