"""The contract between the family-agnostic trainer and a model family.

A family lives in `upgen/models/<name>.py` and exports `FAMILY = Family(...)`; its config is
`configs/<name>.py` with `get_config(variant)`. The trainer, `upgen sample`, `upgen bench` and
the previews talk to a family only through this record, and to the data only through the
reader the family names, so adding a family touches its own module, config and tests.

A run is built in three steps (`build`):

  spec     = family.reads.spec(config.data)             sizes the data fixes (DataSpec)
  model    = family.model_config(config.model, spec)    frozen architecture record
  settings = family.loss_config(config.loss, model)     frozen objective record
             family.sample_config(config.sample)        frozen sampler record (if it samples)

and every callable below takes those parsed records, never `config` itself. `config.model`
holds the architecture only (resuming refuses a changed one), `config.loss` the objective
(free to change on resume), `config.data` what to read and how to cut it.

Batches are whatever the family's reader yields (upgen/data/readers.py documents the keys);
the trainer moves them to devices without looking inside.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
import pkgutil
from typing import Any, Callable, Mapping, Optional, Protocol

from flax import linen as nn
import jax

from upgen import errors
from upgen.data import readers
from upgen.data.spec import DataSpec

Batch = Mapping[str, Any]
Metrics = dict[str, jax.Array]


class ModelConfigFn(Protocol):
  def __call__(self, group: Any, spec: DataSpec) -> Any:
    """config.model (a ConfigDict or dict) and the data spec -> frozen model config."""


class LossConfigFn(Protocol):
  def __call__(self, group: Any, model_config: Any) -> Any:
    """config.loss and the model config (for checks across both) -> frozen loss settings."""


class SampleConfigFn(Protocol):
  def __call__(self, group: Any) -> Any:
    """config.sample -> frozen (hashable) sampler settings."""


class MakeModelFn(Protocol):
  def __call__(self, model_config: Any) -> nn.Module: ...


class InitFn(Protocol):
  def __call__(self, model: nn.Module, rng: jax.Array, batch: Batch) -> dict[str, Any]:
    """Variables with a "params" collection, for a batch of the reader's dummy shapes."""


class LossFn(Protocol):
  def __call__(self, params: Any, batch: Batch, rng: jax.Array, *, model: nn.Module,
               settings: Any, train: bool, step: jax.Array) -> tuple[jax.Array, Metrics]:
    """Pure and jittable: (scalar loss, {name: scalar}). `rng` drives masking and dropout;
    `step` is the optimizer step (losses that change over training read it)."""


class PreviewFn(Protocol):
  def __call__(self, params: Any, batch: Batch, rng: jax.Array, *, model: nn.Module
               ) -> jax.Array:
    """The family's own preview of a batch (uint8 pixels, or image token ids). Families
    without one preview by `sample_images` on the batch's captions."""


class SampleImagesFn(Protocol):
  def __call__(self, params: Any, text_tokens_BxLt: jax.Array, text_mask_BxLt: jax.Array,
               rng: jax.Array, *, model: nn.Module, settings: Any) -> jax.Array:
    """Text->image: int32 image token ids BxLi (or uint8 pixels BxHxWx3), one per row."""


class InpaintFn(Protocol):
  def __call__(self, params: Any, image_tokens_BxLi: jax.Array, known_BxLi: jax.Array,
               text_tokens_BxLt: jax.Array, text_mask_BxLt: jax.Array, rng: jax.Array, *,
               model: nn.Module, settings: Any) -> jax.Array:
    """Regenerates the image tokens where `known` is False from the caption; keeps the rest."""


class UnconditionalFn(Protocol):
  def __call__(self, params: Any, rng: jax.Array, *, model: nn.Module, settings: Any,
               num: int) -> jax.Array:
    """`num` images with no caption (`num` static under jit)."""


class CaptionImagesFn(Protocol):
  def __call__(self, params: Any, image_tokens_BxLi: jax.Array, rng: jax.Array, *,
               model: nn.Module, settings: Any) -> jax.Array:
    """Image->text: int32 text token ids BxLt."""


class ImageNllFn(Protocol):
  def __call__(self, params: Any, batch: Batch, *, model: nn.Module) -> jax.Array:
    """float32 B: -log p(image tokens | caption) of each example in nats (`upgen eval nll`)."""


class ImageFeaturesFn(Protocol):
  def __call__(self, params: Any, images: jax.Array, *, model: nn.Module) -> list[jax.Array]:
    """Per layer, B x E features of the images alone, no caption the model could read a label
    from (`upgen eval probe`: UPGen's linear probe over concatenated layers). `images` is
    what the family reads: codes BxLi (token records) or uint8 pixels BxHxWx3 (pixel
    records)."""


class TextNllFn(Protocol):
  def __call__(self, params: Any, ids_BxT: jax.Array, pads_B: jax.Array, *, model: nn.Module
               ) -> tuple[jax.Array, jax.Array]:
    """Plain text, left-padded (`pads_B` leading pads): (nats, scored), both Bx(T-1), of each
    token after the first given the ones before it (`upgen eval text-ppl`)."""


class TrainFlopsFn(Protocol):
  def __call__(self, model_config: Any) -> Any:
    """flops.FlopCount of one example's forward + backward (MFU in `upgen bench`)."""


@dataclasses.dataclass(frozen=True)
class ImageCodec:
  """A family that is an image tokenizer (upgen/tokenizers/image.py): `encode` (params,
  uint8 images BxHxWx3, *, model) -> int32 ids Bxhxw and `decode` (params, ids, *, model)
  -> uint8 images, jittable, over the params entries `params_keys` alone. Its model config
  has codebook_size, grid (the grid's side) and image_size."""
  encode: Callable[..., jax.Array]
  decode: Callable[..., jax.Array]
  params_keys: tuple[str, ...]


class SampleCostFn(Protocol):
  def __call__(self, model_config: Any, settings: Any, batch_size: int,
               param_bytes: int) -> "SampleCost":
    """The work of one sample_images call on batch_size prompts (`upgen bench sample`)."""


@dataclasses.dataclass(frozen=True)
class Family:
  """What a model family supplies. Optional entries are None where the family cannot."""
  name: str
  reads: readers.Reader  # The input pipeline and batch layout it trains on.
  model_config: ModelConfigFn
  loss_config: LossConfigFn
  make_model: MakeModelFn
  init_variables: InitFn
  loss_fn: LossFn
  sample_config: Optional[SampleConfigFn] = None
  preview: Optional[PreviewFn] = None
  sample_images: Optional[SampleImagesFn] = None
  inpaint: Optional[InpaintFn] = None
  unconditional_images: Optional[UnconditionalFn] = None
  caption_images: Optional[CaptionImagesFn] = None
  # The run's loss settings -> whether it trained image->text (None: whenever caption_images).
  caption_trained: Optional[Callable[[Any], bool]] = None
  image_nll: Optional[ImageNllFn] = None
  text_nll: Optional[TextNllFn] = None
  image_features: Optional[ImageFeaturesFn] = None
  text_context: Optional[Callable[[Any], int]] = None  # model config -> positions it reads.
  train_flops: Optional[TrainFlopsFn] = None
  sample_cost: Optional[SampleCostFn] = None
  # Parameter groups config.optim.freeze and config.train.init_groups can name: group ->
  # parameter patterns (`member`), or a function of the model config giving them.
  param_groups: Any = dataclasses.field(default_factory=dict)
  # `upgen import hf`: (HF config.json dict, tensors by "a/b/c" name in the Flax layout
  # (models/hf_weights.Tensor), tokenizer=the directory's text tokenizer or None) -> HFImport
  # (config.model values, the parameters it supplies, notes).
  import_hf: Optional[Callable[..., Any]] = None
  # `upgen export hf`: (params as numpy, model config) -> (HF config.json dict, weights by
  # "a/b/c" name in the Flax layout).
  export_hf: Optional[Callable[[Any, Any], tuple[dict, dict]]] = None
  image_codec: Optional[ImageCodec] = None  # An image tokenizer family (`upgen tokenize`).

  def can(self, what: str) -> Callable[..., Any]:
    """The entry `what` (e.g. "inpaint"), or an error naming the family that lacks it."""
    fn = getattr(self, what)
    if fn is None:
      raise errors.ConfigError(
          f"family {self.name!r} cannot {ABILITIES.get(what, what)} (its FAMILY "
          f"has no {what}); families that can: "
          f"{', '.join(n for n in names() if getattr(get_family(n), what))}")
    return fn


# Family entries -> what they let a user do (for errors).
ABILITIES = {"sample_images": "draw images from captions", "inpaint": "inpaint images",
             "unconditional_images": "draw images without a caption",
             "caption_images": "caption images", "image_nll": "score image likelihoods",
             "text_nll": "score plain text", "text_context": "score plain text",
             "image_features": "give per-layer image features (linear probe)",
             "export_hf": "export a Hugging Face model",
             "sample_cost": "report its sampling cost",
             "image_codec": "tokenize images (an image tokenizer)", "train_flops": "count its FLOPs"}
# config.model keys that select the family and name the variant; not architecture fields.
MODEL_SELECTORS = ("family", "size")


@dataclasses.dataclass(frozen=True)
class SampleCost:
  """The work of one text->image sampling call: model FLOPs, and the device-memory bytes
  it cannot avoid reading (the parameters once per decoding step, plus the KV cache for
  cached decoding). FLOPs bound large batches; bytes bound cached decoding at small ones."""
  flops: float
  bytes: float
  note: str  # How both were counted, with the numbers in.


def trains_captioning(family: Family, loss_settings: Any) -> bool:
  """Whether a run of `family` trained with `loss_settings` (config.loss) learns to caption
  images: the family can, and the settings give it image->text examples."""
  return family.caption_images is not None and (
      family.caption_trained is None or bool(family.caption_trained(loss_settings)))


@dataclasses.dataclass(frozen=True)
class Setup:
  """A family built for one config and data spec: everything the trainer and samplers use."""
  family: Family
  spec: DataSpec
  model_config: Any
  loss: Any
  sample: Any  # None when the family does not sample.
  model: nn.Module

  def loss_fn(self) -> Callable[..., tuple[jax.Array, Metrics]]:
    """(params, batch, rng, *, train, step) -> (loss, metrics), the model and settings bound."""
    return functools.partial(self.family.loss_fn, model=self.model, settings=self.loss)

  def bind(self, what: str) -> Callable[..., jax.Array]:
    """A sampler entry with the model and sample settings bound (error if the family lacks it)."""
    return functools.partial(self.family.can(what), model=self.model, settings=self.sample)

  @property
  def captions_images(self) -> bool:
    """Whether this run can caption images: its family can and its training taught it."""
    return trains_captioning(self.family, self.loss)

  def dummy_batch(self, batch_size: int) -> dict[str, Any]:
    return self.family.reads.dummy_batch(self.spec, batch_size)


def get_family(name: str) -> Family:
  """Imports `upgen.models.<name>` and returns its FAMILY."""
  try:
    module = importlib.import_module(f"upgen.models.{name}")
  except ModuleNotFoundError as e:
    if e.name != f"upgen.models.{name}":
      raise
    raise errors.ConfigError(
        f"config.model.family={name!r}: no module upgen.models.{name} (families: "
        f"{', '.join(names())})") from e
  family = getattr(module, "FAMILY", None)
  if not isinstance(family, Family):
    raise errors.ConfigError(f"upgen.models.{name} does not export FAMILY = Family(...)")
  return family



def names() -> list[str]:
  """Every family under upgen/models/ (the modules that export FAMILY), sorted."""
  out = []  # Found by name, as get_family finds them (models sit above this contract).
  for info in pkgutil.iter_modules(importlib.import_module("upgen.models").__path__):
    module = importlib.import_module(f"upgen.models.{info.name}")
    if isinstance(getattr(module, "FAMILY", None), Family):
      out.append(info.name)
  return sorted(out)


def build(config: Any, spec: DataSpec, family: Optional[Family] = None) -> Setup:
  """Parses config.model / config.loss / config.sample against `spec` and makes the model."""
  family = family or get_family(config.model.family)
  model_config = family.model_config(config.model, spec)
  loss = family.loss_config(config.get("loss"), model_config)
  sample = None
  if family.sample_config is not None:
    sample = family.sample_config(config.get("sample"))
  elif config.get("sample"):
    raise errors.ConfigError(
        f"config.sample: family {family.name!r} does not sample; remove the group")
  return Setup(family, spec, model_config, loss, sample, family.make_model(model_config))
