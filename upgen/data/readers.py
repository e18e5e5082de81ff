"""Readers: what a family declares it reads (`Family.reads`), and everything the trainer,
`upgen bench` and the previews need to know about those batches without naming a key.

A reader turns config.data into a `DataSpec` (the sizes the data fixes), iterators of this
process's rows of each global batch (upgen/data/pipeline.py), a dummy batch of the real
shapes (init, bench), and the few views of a batch that previews need.

  TOKEN_RECORDS  pre-tokenized records (`upgen tokenize`, docs/data.md):
                   image_tokens int32 BxLi  image token ids, raster order (0 where no image)
                   text_tokens  int32 BxLt  caption ids padded with the tokenizer's [PAD]
                   text_mask    bool  BxLt  True on real caption tokens
                   has_image    bool  B     the example carries an image
                   has_text     bool  B     the example carries a caption
  PIXEL_RECORDS  records written with `upgen tokenize --pixels`: TOKEN_RECORDS' keys and
                   pixels       uint8 BxSxSx3 the stored image (zeros where has_image is
                                False), S = metadata.json pixels.image_size
                 (image_tokens is Bx0 when the records were written without an image
                 tokenizer), for the families that work in pixels
  IMAGE_FOLDER   a folder of images (DIR/<split>/captions.jsonl), for image tokenizers:
                   image        uint8 BxSxSx3 pixels, S = config.data.image_size
"""
from __future__ import annotations

from typing import Any, Optional, Protocol, Sequence

import jax.numpy as jnp
import numpy as np

from upgen import errors
from upgen.data import pipeline
from upgen.data import records
from upgen.data.spec import DataSpec

Batch = dict[str, Any]


class Reader(Protocol):
  name: str

  def spec(self, data: Any) -> DataSpec:
    """The data spec of config.data (reads metadata where there is some)."""

  def synthetic_spec(self, data: Any, *, image_grid: int, image_vocab: int,
                     text_vocab: int) -> DataSpec:
    """A spec of the given sizes, for benchmarks and tests without data on disk."""

  def train_iterator(self, config: Any, spec: DataSpec, rows: Optional[Sequence[int]]) -> Any:
    """Infinite, shuffled, resumable (get_state / set_state) iterator of numpy batches."""

  def eval_iterator(self, config: Any, spec: DataSpec, split: str,
                    rows: Optional[Sequence[int]]) -> Any:
    """One deterministic pass over `split`."""

  def dummy_batch(self, spec: DataSpec, batch_size: int) -> Batch: ...

  def tokens_per_example(self, spec: DataSpec) -> int:
    """Tokens one example feeds the model (0 for pixels): the tokens/s the trainer logs."""

  def reference(self, batch: Batch) -> Any:
    """The batch's own images (token ids or pixels), jittable: the top row of a preview."""

  def captions(self, batch: Batch) -> Optional[tuple[Any, Any]]:
    """(text ids, valid mask) of the batch's captions, or None when it has none."""


class TokenRecords:
  """Pre-tokenized records; see the module docstring for the batch layout."""
  name = "token_records"

  def spec(self, data: Any) -> DataSpec:
    if not data.dir:
      raise errors.ConfigError(
          "config.data.dir is empty: point it at a directory of records written "
          "by `upgen tokenize` (with metadata.json)")
    return pipeline.token_spec(data)

  def synthetic_spec(self, data: Any, *, image_grid: int, image_vocab: int,
                     text_vocab: int) -> DataSpec:
    return DataSpec(text_vocab_size=text_vocab, text_pad_id=0, text_mask_id=1, text_bos_id=2,
                    text_eos_id=3, text_seq_len=int(data.text_seq_len),
                    image_vocab_size=image_vocab,
                    image_grid=(image_grid, image_grid))

  def train_iterator(self, config, spec, rows):
    return pipeline.make_train_iterator(config, spec, rows=rows)

  def eval_iterator(self, config, spec, split, rows):
    return pipeline.make_eval_iterator(config, spec, split, rows=rows)

  def dummy_batch(self, spec: DataSpec, batch_size: int) -> Batch:
    """A paired batch of the right shapes and dtypes (full-length captions, values arbitrary)."""
    lt = spec.text_seq_len
    text = np.arange(batch_size * lt).reshape(batch_size, lt) % max(spec.text_vocab_size, 1)
    return {"image_tokens": np.zeros((batch_size, spec.image_seq_len), np.int32),
            "text_tokens": text.astype(np.int32),
            "text_mask": np.ones((batch_size, lt), bool),
            "has_image": np.ones((batch_size,), bool),
            "has_text": np.ones((batch_size,), bool)}

  def tokens_per_example(self, spec: DataSpec) -> int:
    return spec.image_seq_len + spec.text_seq_len

  def reference(self, batch: Batch) -> Any:
    return batch["image_tokens"]

  def captions(self, batch: Batch) -> tuple[Any, Any]:
    has_text_B = jnp.asarray(batch["has_text"], bool)
    return (jnp.asarray(batch["text_tokens"], jnp.int32),
            jnp.asarray(batch["text_mask"], bool) & has_text_B[:, None])


class PixelRecords(TokenRecords):
  """Records that carry each image's pixels (and its caption tokens)."""
  name = "pixel_records"

  def spec(self, data: Any) -> DataSpec:
    spec = super().spec(data)
    if records.read_metadata(data.dir).get("pixels") is None:
      raise errors.DataError(f"config.data.dir={data.dir}: its records carry no pixels "
                             "(metadata.json has no \"pixels\"); write them with "
                             "`upgen tokenize --pixels`")
    return spec

  def synthetic_spec(self, data: Any, *, image_grid: int, image_vocab: int,
                     text_vocab: int) -> DataSpec:
    del image_grid, image_vocab
    return DataSpec(text_vocab_size=text_vocab, text_pad_id=0, text_mask_id=1, text_bos_id=2,
                    text_eos_id=3, text_seq_len=int(data.text_seq_len),
                    image_size=int(data.get("image_size", 32)))

  def train_iterator(self, config, spec, rows):
    return pipeline.make_train_iterator(config, spec, rows=rows, pixels=True)

  def eval_iterator(self, config, spec, split, rows):
    return pipeline.make_eval_iterator(config, spec, split, rows=rows, pixels=True)

  def dummy_batch(self, spec: DataSpec, batch_size: int) -> Batch:
    batch = super().dummy_batch(spec, batch_size)
    batch["pixels"] = np.zeros((batch_size, spec.image_size, spec.image_size, 3), np.uint8)
    return batch

  def tokens_per_example(self, spec: DataSpec) -> int:
    return spec.text_seq_len

  def reference(self, batch: Batch) -> Any:
    return batch["pixels"]



class ImageFolder:
  """Images from config.data.dir/<split>/captions.jsonl at config.data.image_size."""
  name = "image_folder"

  def spec(self, data: Any) -> DataSpec:
    size = int(data.image_size)
    if size < 1:
      raise errors.ConfigError(f"config.data.image_size={size}: must be >= 1")
    return DataSpec(image_size=size)

  def synthetic_spec(self, data: Any, **unused) -> DataSpec:
    del unused
    return self.spec(data)

  def train_iterator(self, config, spec, rows):
    return pipeline.make_image_iterator(config, spec, config.data.train_split, rows=rows,
                                        train=True)

  def eval_iterator(self, config, spec, split, rows):
    return pipeline.make_image_iterator(config, spec, split, rows=rows, train=False)

  def dummy_batch(self, spec: DataSpec, batch_size: int) -> Batch:
    return {"image": np.zeros((batch_size, spec.image_size, spec.image_size, 3), np.uint8)}

  def tokens_per_example(self, spec: DataSpec) -> int:
    return 0

  def reference(self, batch: Batch) -> Any:
    return batch["image"]

  def captions(self, batch: Batch) -> None:
    return None



TOKEN_RECORDS = TokenRecords()
PIXEL_RECORDS = PixelRecords()
IMAGE_FOLDER = ImageFolder()
