"""Sample grids for TensorBoard while training (config.train.sample_every).

The top row shows the first config.train.sample_examples examples of the first validation
batch (which stay the same over the run, so grids compare step to step), the row below the
family's output for them: its own `preview` where it has one (the VQGAN's reconstructions),
else `sample_images` on their captions. The family's reader says where those images and
captions are in a batch and turns token ids into pixels (with the data's image tokenizer),
so nothing here knows a batch layout. Decoding runs on the host's copy of the ids, outside
the training mesh, so previews work on any mesh shape.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Optional

import jax
import ml_collections
import numpy as np

from upgen import families
from upgen.runtime import writers
from upgen.tokenizers import image as image_tok

log = logging.getLogger("upgen.train")


def preview_fn(setup: families.Setup) -> Optional[Callable[..., Any]]:
  """(params, batch, rng) -> the family's images for the batch, or None if it has none."""
  family = setup.family
  if not setup.spec.image_seq_len and not setup.spec.image_size:
    return None  # Data without images (a language model on text records): nothing to draw.
  if family.preview is not None:
    return lambda params, batch, rng: family.preview(params, batch, rng, model=setup.model)
  if family.sample_images is None:
    return None
  sample = setup.bind("sample_images")

  def from_captions(params, batch, rng):
    captions = family.reads.captions(batch)
    if captions is None:
      raise ValueError(f"family {family.name!r} samples from captions, but its reader "
                       f"{family.reads.name!r} yields none")
    return sample(params, *captions, rng)

  return from_captions


class Previewer:
  """Jitted preview of a fixed set of examples, rendered to one grid image."""

  def __init__(self, config: ml_collections.ConfigDict, setup: families.Setup,
               fn: Callable[..., Any], replicated: jax.sharding.Sharding):
    self.num = int(config.train.sample_examples)
    self._batch: Optional[dict] = None  # The global batch previewed at every call.
    self._pixels = image_tok.pixels_fn(config.data)
    reference, num = setup.family.reads.reference, self.num

    def both(params, batch, rng):
      # Slicing inside jit keeps multi-host simple: the batch is the sharded global batch,
      # the output is replicated and so readable on every process.
      few = jax.tree.map(lambda x: x[:num], batch)
      return reference(few), fn(params, few, rng)

    self._fn = jax.jit(both, out_shardings=(replicated, replicated))

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
    reference, preview = (np.asarray(x) for x in jax.device_get(
        self._fn(params, self._batch, rng)))
    try:
      images = np.concatenate([self._pixels(reference), self._pixels(preview)])
    except FileNotFoundError as e:  # Training does not need the image tokenizer; grids do.
      log.warning("no sample grids: %s", e)
      self._batch = {}
      return None
    return writers.image_grid(images, columns=len(images) // 2)


def make(config: ml_collections.ConfigDict, setup: families.Setup,
         replicated: jax.sharding.Sharding) -> Optional[Previewer]:
  """A Previewer when config.train.sample_every > 0 and the family can preview."""
  if config.train.sample_every <= 0:
    return None
  fn = preview_fn(setup)
  if fn is None:
    why = ("the data has no images" if not setup.spec.image_seq_len and not setup.spec.image_size
           else f"family {setup.family.name} neither previews nor samples")
    log.warning("config.train.sample_every=%d but %s; no sample grids",
                config.train.sample_every, why)
    return None
  return Previewer(config, setup, fn, replicated)
