"""Sample grids for TensorBoard while training (config.train.sample_every).

A family's `preview_fn` turns a batch into uint8 images or into image token ids; ids are
decoded here with the image tokenizer recorded in the data's metadata.json. The grid shows
the references (the batch's own images) in the top row and the previews below them, for the
first config.train.sample_examples examples of the first validation batch, which stay the
same over the run so that grids are comparable step to step.
"""
from __future__ import annotations

import functools
import logging
from typing import Any, Callable, Optional

import jax
import ml_collections
import numpy as np

from upgen import families
from upgen.train import writers

log = logging.getLogger("upgen.train")


def _image_decoder(config: ml_collections.ConfigDict) -> Callable[[np.ndarray], np.ndarray]:
  """int ids NxLi -> uint8 pixels with the data's image tokenizer."""
  from upgen.data import pipeline
  from upgen.data import records
  from upgen.tokenizers import image
  tok = image.load(records.tokenizer_path(config.data.dir, pipeline.read_metadata(config.data.dir),
                                          "image_tokenizer"))
  h, w = tok.grid
  return lambda ids: tok.decode(np.asarray(ids).reshape(-1, h, w))


class Previewer:
  """Jitted preview of a fixed set of examples, rendered to one grid image."""

  def __init__(self, config: ml_collections.ConfigDict, family: families.Family, model: Any,
               replicated: jax.sharding.Sharding):
    self.num = int(config.train.sample_examples)
    self._decode: Optional[Callable[[np.ndarray], np.ndarray]] = None
    self._batch: Optional[dict] = None  # The global batch previewed at every call.
    if family.data_kind == "tokens":
      self._decode = _image_decoder(config)
    num = self.num
    preview = functools.partial(family.preview_fn, model=model, config=config)

    def fn(params, batch, rng):
      # Slicing inside jit keeps multi-host simple: the batch is the sharded global batch,
      # the output is replicated and so readable on every process.
      few = jax.tree.map(lambda x: x[:num], batch)
      reference = few["image_tokens"] if "image_tokens" in few else few["image"]
      return reference, preview(params, few, rng)

    self._fn = jax.jit(fn, out_shardings=(replicated, replicated))

  def _pixels(self, x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype == np.uint8 and x.ndim == 4:
      return x
    if self._decode is None:
      raise ValueError(f"preview returned {x.dtype} {x.shape}: token ids need a tokens family")
    return self._decode(x)

  def __call__(self, params: Any, first_batch: Callable[[], dict], rng: jax.Array
               ) -> Optional[np.ndarray]:
    """A uint8 grid: references on top, previews below, one column per example. The batch
    comes from `first_batch()` on the first call and is kept; None (with a warning, once)
    when there is no such batch."""
    if self._batch is None:
      try:
        self._batch = first_batch()
      except (FileNotFoundError, KeyError, ValueError, StopIteration) as e:
        log.warning("no validation batch for sample grids (%s); not writing them", e)
        self._batch = {}
    if not self._batch:
      return None
    reference, preview = jax.device_get(self._fn(params, self._batch, rng))
    images = np.concatenate([self._pixels(reference), self._pixels(preview)])
    return writers.image_grid(images, columns=len(images) // 2)


def make(config: ml_collections.ConfigDict, family: families.Family, model: Any,
         replicated: jax.sharding.Sharding) -> Optional[Previewer]:
  """A Previewer when config.train.sample_every > 0 and the family has a preview_fn."""
  if config.train.sample_every <= 0:
    return None
  if family.preview_fn is None:
    log.warning("config.train.sample_every=%d but family %s has no preview_fn; no sample grids",
                config.train.sample_every, family.name)
    return None
  try:
    return Previewer(config, family, model, replicated)
  except FileNotFoundError as e:  # Training does not need the image tokenizer; grids do.
    log.warning("no sample grids: %s", e)
    return None
