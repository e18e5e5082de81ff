"""The contract between the family-agnostic trainer and a model family.

A family lives in `upgen/models/<name>.py` and exports `FAMILY = Family(...)`. The trainer,
`upgen sample` and `upgen bench` only ever talk to a family through this record, so adding
a family touches its own module and its config, nothing else.

Batches are dicts of arrays with a leading batch dimension `B`:

  data.kind == "tokens" (pre-tokenized records, see docs/data.md):
    image_tokens_BxLi  int32  image token ids (raster order); zeros where has_image is False
    text_tokens_BxLt   int32  text token ids padded with the tokenizer's [PAD] id
    text_mask_BxLt     bool   True on real (non-pad) text tokens
    has_image_B        bool   example carries an image
    has_text_B         bool   example carries a caption
  data.kind == "images":
    image_BxHxWx3      uint8  pixels

(Keys are the names without the shape suffix: "image_tokens", "text_tokens", ...)
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable, Mapping, Optional

import jax
import ml_collections
import numpy as np
from flax import linen as nn

Batch = Mapping[str, Any]
# loss_fn(params, batch, rng, *, model, config, train, step) -> (scalar loss, {name: scalar}).
# `step` is the optimizer step (int32 scalar array), for losses that change over training.
LossFn = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]


@dataclasses.dataclass(frozen=True)
class Family:
  """What a model family supplies to the trainer."""
  name: str
  # "tokens" or "images": which input pipeline feeds this family.
  data_kind: str
  # config -> flax module (config.model fields are already resolved against the data).
  make_model: Callable[[ml_collections.ConfigDict], nn.Module]
  # (config, batch_size) -> numpy batch of the right shapes/dtypes (init, eval_shape, bench).
  dummy_batch: Callable[[ml_collections.ConfigDict, int], dict[str, np.ndarray]]
  # (model, rng, batch) -> variables dict with a "params" collection.
  init_variables: Callable[[nn.Module, jax.Array, Batch], dict[str, Any]]
  # See LossFn. Must be pure and jittable; `rng` drives masking and dropout.
  loss_fn: LossFn
  # Optional: (params, batch, rng, *, model, config) -> preview for TensorBoard: uint8
  # images BxHxWx3, or int32 image token ids BxLi (the trainer decodes them).
  preview_fn: Optional[Callable[..., jax.Array]] = None
  # Optional, for `upgen sample`: text->image. (params, text_tokens_BxLt, text_mask_BxLt, rng,
  # *, model, config) -> int32 image token ids BxLi, decoding settings from config.sample.
  sample_images: Optional[Callable[..., jax.Array]] = None
  # Optional, for `upgen sample --captions-for`: image->text. (params, image_tokens_BxLi, rng,
  # *, model, config) -> int32 text token ids BxLt.
  caption_images: Optional[Callable[..., jax.Array]] = None
  # Optional, for `upgen eval nll`: (params, batch, *, model, config) -> float32 B, the
  # -log p(image tokens | caption) of each paired example in nats (exact or an upper bound).
  image_nll: Optional[Callable[..., jax.Array]] = None
  # Optional: (config) -> flops.FlopCount of one example's forward+backward (MFU in bench).
  train_flops_per_example: Optional[Callable[[ml_collections.ConfigDict], Any]] = None
  # Optional: (config, batch_size, param_bytes) -> SampleCost of one sample_images call on
  # batch_size prompts with config.sample (`upgen bench sample` sets these beside its bounds).
  sample_cost: Optional[Callable[[ml_collections.ConfigDict, int, int], "SampleCost"]] = None


@dataclasses.dataclass(frozen=True)
class SampleCost:
  """The work of one text->image sampling call: model FLOPs, and the device-memory bytes
  it cannot avoid reading (the parameters once per decoding step, plus the KV cache for
  cached decoding). FLOPs bound large batches; bytes bound cached decoding at small ones."""
  flops: float
  bytes: float
  note: str  # How both were counted, with the numbers in.


def paired_token_batch(batch_size: int, image_seq_len: int, text_seq_len: int,
                       text_vocab_size: int) -> dict[str, np.ndarray]:
  """A paired "tokens" batch of the right shapes/dtypes (full-length captions, values
  arbitrary): what token families return from dummy_batch."""
  text = np.arange(batch_size * text_seq_len).reshape(batch_size, text_seq_len)
  return {
      "image_tokens": np.zeros((batch_size, image_seq_len), np.int32),
      "text_tokens": (text % text_vocab_size).astype(np.int32),
      "text_mask": np.ones((batch_size, text_seq_len), bool),
      "has_image": np.ones((batch_size,), bool),
      "has_text": np.ones((batch_size,), bool),
  }


def get_family(name: str) -> Family:
  """Imports `upgen.models.<name>` and returns its FAMILY."""
  try:
    module = importlib.import_module(f"upgen.models.{name}")
  except ModuleNotFoundError as e:
    raise ValueError(f"config.model.family={name!r}: no module upgen.models.{name}") from e
  family = getattr(module, "FAMILY", None)
  if not isinstance(family, Family):
    raise ValueError(f"upgen.models.{name} does not export FAMILY = Family(...)")
  return family
