"""UPGen: a bidirectional masked transformer over [image tokens; text tokens].

Inputs are image token ids (codebook ids; id `image_vocab_size` is the image [MASK]) and text
token ids (the text tokenizer's vocabulary; its [MASK] / [PAD] ids come from the data spec).
Embeddings: per-modality token tables + fixed sinusoidal positions (2D over the image grid,
1D over the text; or 1D over the joint sequence) + a learned modality-type vector. Pre-LN
blocks (upgen/models/layers.py), a final LayerNorm, and separate heads for image logits and
text logits. Keys that carry no information are masked out of attention: the image of
text-only examples, the text of image-only ones, and text padding unless
config.model.text_pads="tokens" (`text_slots`): then a caption's padding is tokens the model
reads and writes, which is how image->text decodes a caption of the right length.

Training (`loss_fn`) masks a random fraction r of each example's valid tokens (MaskGIT /
MUSE style) and scores the masked positions only; see `sample_masks` for the ratios.
Sampling lives in upgen/sampling/upgen_sampler.py.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

from flax import linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from upgen import errors
from upgen import families
from upgen import flops
from upgen import schema
from upgen.data import readers
from upgen.data.spec import DataSpec
from upgen.families import Batch
from upgen.families import Family
from upgen.models import head_loss
from upgen.models import layers
from upgen.models import positions
from upgen.sampling import mask_schedule
from upgen.sampling import upgen_sampler
from upgen.sampling.settings import SampleSettings

PAIRED_MASKING = ("joint", "independent")
TEXT_PADS = ("masked", "tokens")


def text_slots(text_mask_BxLt: jax.Array, text_pads: str) -> jax.Array:
  """The text positions an example holds (attended; maskable in training): its real tokens
  ("masked": padding is no token), or every position of an example with any text
  ("tokens": padding is a token to read and to write)."""
  mask_BxLt = jnp.asarray(text_mask_BxLt, bool)
  if text_pads == "masked":
    return mask_BxLt
  return jnp.broadcast_to(jnp.any(mask_BxLt, axis=1, keepdims=True), mask_BxLt.shape)


@dataclasses.dataclass(frozen=True, kw_only=True)
class UPGenConfig(layers.TransformerConfig):
  """The architecture: config.model plus the sizes the data fixes (DataSpec.token_sizes)."""
  image_vocab_size: int
  text_vocab_size: int
  image_seq_len: int
  image_grid_width: int
  text_seq_len: int
  text_pad_id: int
  text_mask_id: int
  position_embedding: str = "2d"
  embed_init_std: float = 1.0
  text_pads: str = "masked"

  def __post_init__(self):
    super().__post_init__()
    if self.text_pads not in TEXT_PADS:
      raise errors.ConfigError(
          f"config.model.text_pads={self.text_pads!r}: choose one of {TEXT_PADS}")
    for key in ("text_pad_id", "text_mask_id"):
      if not 0 <= getattr(self, key) < self.text_vocab_size:
        raise ValueError(f"the data's {key}={getattr(self, key)} is outside its text "
                         f"vocabulary [0, {self.text_vocab_size}): UPGen needs a [PAD] and a "
                         "[MASK] token in the text tokenizer")
    if self.position_embedding not in ("1d", "2d"):
      raise errors.ConfigError(f"config.model.position_embedding={self.position_embedding!r}: "
                               "choose '1d' or '2d'")
    if self.image_grid_width < 1 or self.image_seq_len % self.image_grid_width:
      raise ValueError(f"image_seq_len={self.image_seq_len} is not a grid of "
                       f"image_grid_width={self.image_grid_width} columns")
    if self.position_embedding == "2d" and self.emb_dim % 4:
      raise errors.ConfigError(f"config.model.position_embedding='2d' needs config.model.emb_dim "
                               f"divisible by 4, got {self.emb_dim}")

  def positions(self) -> np.ndarray:
    """Fixed (Li + Lt) x E table: 2D sin-cos over the image grid then 1D over the text
    ("2d"), or 1D over the joint sequence ("1d")."""
    li, lt, e = self.image_seq_len, self.text_seq_len, self.emb_dim
    if self.position_embedding == "1d":
      return positions.sinusoidal_1d(li + lt, e)
    w = self.image_grid_width
    return np.concatenate([positions.sinusoidal_2d(li // w, w, e), positions.sinusoidal_1d(lt, e)])

  @property
  def image_mask_id(self) -> int:
    return self.image_vocab_size


def model_config(group: Any, spec: DataSpec) -> UPGenConfig:
  return schema.parse(UPGenConfig, group, "config.model", given=spec.token_sizes(),
                      skip=families.MODEL_SELECTORS)


class UPGen(nn.Module):
  """(image ids BxLi, text ids BxLt, text mask BxLt, has_image B) -> (image logits, text logits)."""
  config: UPGenConfig

  @nn.compact
  def __call__(self, image_tokens_BxLi: jax.Array, text_tokens_BxLt: jax.Array,
               text_mask_BxLt: jax.Array, has_image_B: Optional[jax.Array] = None, *,
               train: bool = False, features: bool = False) -> tuple[jax.Array, jax.Array]:
    """(image logits BxLixVi, text logits BxLtxVt); with `features`, the final-norm hidden
    states of the image and text positions instead (BxLixE, BxLtxE), for a loss that applies
    the heads itself (upgen/models/head_loss.py).

    Text of length 0 (BxLt with Lt = 0) runs the image alone, every key attended
    (`has_image_B` unread): the image outputs of a full sequence whose text keys are all
    masked out, without computing the text positions (guidance's unconditional stream)."""
    cfg = self.config
    li, lt = image_tokens_BxLi.shape[1], text_tokens_BxLt.shape[1]
    if li != cfg.image_seq_len or lt not in (cfg.text_seq_len, 0):
      raise ValueError(f"UPGen got image/text lengths {(li, lt)}, the model's image_seq_len/"
                       f"text_seq_len (data_spec.json) say {(cfg.image_seq_len, cfg.text_seq_len)}"
                       " (or text length 0: the image alone)")
    init = nn.initializers.normal(stddev=cfg.embed_init_std)
    embed = lambda n, name: layers.Embed(layers.pad_vocab(n), cfg.emb_dim, dtype=cfg.dtype,
                                         param_dtype=cfg.param_dtype, embedding_init=init,
                                         name=name)
    image_BxLixE = embed(cfg.image_vocab_size + 1, "image_embed")(image_tokens_BxLi)
    text_BxLtxE = embed(cfg.text_vocab_size, "text_embed")(text_tokens_BxLt)
    types_2xE = self.param("type_embed", nn.with_logical_partitioning(layers.embed_init,
                                                                      (None, "embed")),
                           (2, cfg.emb_dim), cfg.param_dtype)
    type_ids_L = np.concatenate([np.zeros(li, np.int32), np.ones(lt, np.int32)])
    x_BxLxE = jnp.concatenate([image_BxLixE, text_BxLtxE], axis=1)
    # Both position tables put the image rows first.
    x_BxLxE = (x_BxLxE + jnp.asarray(cfg.positions()[:li + lt])[None]
               + jnp.asarray(types_2xE)[type_ids_L][None]).astype(cfg.dtype)
    x_BxLxE = nn.Dropout(cfg.dropout_rate)(x_BxLxE, deterministic=not train)
    x_BxLxE = nn.with_logical_constraint(x_BxLxE, ("batch", "length", "embed"))

    if has_image_B is None:
      has_image_B = jnp.ones(image_tokens_BxLi.shape[:1], bool)
    valid_BxL = jnp.concatenate([
        jnp.broadcast_to(has_image_B.astype(bool)[:, None], image_tokens_BxLi.shape),
        text_slots(text_mask_BxLt, cfg.text_pads)], axis=1)
    mask = layers.key_mask(valid_BxL) if lt else None
    x_BxLxE = layers.TransformerStack(cfg.stack(), name="encoder")(
        x_BxLxE, mask, deterministic=not train)
    x_BxLxE = layers.LayerNorm(cfg.dtype, cfg.param_dtype, name="final_norm")(x_BxLxE)
    if features:
      return x_BxLxE[:, :li], x_BxLxE[:, li:]
    head = lambda n, name: layers.Unembed(n, cfg.dtype, cfg.param_dtype, name=name)
    image_logits_BxLixV = head(cfg.image_vocab_size, "image_head")(x_BxLxE[:, :li])
    text_logits_BxLtxV = head(cfg.text_vocab_size, "text_head")(x_BxLxE[:, li:])
    return image_logits_BxLixV, text_logits_BxLtxV


@dataclasses.dataclass(frozen=True)
class MaskingLoss:
  """config.loss: mask ratios and loss weights (see `sample_masks` and `masked_loss`)."""
  mask_schedule: str = "linear"
  paired_masking: str = "joint"
  text_only_mask_ratio: float = 0.15
  paired_text_mask_prob: float = 1.0
  caption_task_keeps_image: bool = True
  paired_image_weight: float = 1.0
  paired_text_weight: float = 0.1
  unpaired_image_weight: float = 1.0
  unpaired_text_weight: float = 0.01
  # Speed levers, exact (upgen/models/head_loss.py): heads on the masked positions only,
  # into a buffer of this fraction of the positions (0 = every position); and the logits
  # in this many chunks, recomputed in the backward pass (1 = all at once).
  logits_capacity: float = 0.0
  logits_chunks: int = 1

  def __post_init__(self):
    mask_schedule.check_schedule(self.mask_schedule, "config.loss.mask_schedule")
    if self.paired_masking not in PAIRED_MASKING:
      raise errors.ConfigError(f"config.loss.paired_masking={self.paired_masking!r}: choose one of "
                               f"{PAIRED_MASKING}")
    if not 0.0 < self.text_only_mask_ratio <= 1.0:
      raise errors.ConfigError(f"config.loss.text_only_mask_ratio={self.text_only_mask_ratio}: "
                               "must be in (0, 1]")
    if not 0.0 <= self.paired_text_mask_prob <= 1.0:
      raise errors.ConfigError(f"config.loss.paired_text_mask_prob={self.paired_text_mask_prob}: "
                               "must be in [0, 1]")
    for key in ("paired_image_weight", "paired_text_weight", "unpaired_image_weight",
                        "unpaired_text_weight"):
      if getattr(self, key) < 0:
        raise errors.ConfigError(f"config.loss.{key}={getattr(self, key)}: must be >= 0")
    if not 0.0 <= self.logits_capacity <= 1.0:
      raise errors.ConfigError(f"config.loss.logits_capacity={self.logits_capacity}: must be "
                               "in [0, 1] (0 = logits at every position)")
    if self.logits_chunks < 1:
      raise errors.ConfigError(f"config.loss.logits_chunks={self.logits_chunks}: must be >= 1")


def loss_config(group: Any, model_cfg: UPGenConfig) -> MaskingLoss:
  del model_cfg
  return schema.parse(MaskingLoss, group, "config.loss")


def _num_to_mask(r_B: jax.Array, valid_BxL: jax.Array) -> jax.Array:
  """ceil(r * num_valid), at least one where a row has any valid token."""
  num_valid_B = jnp.sum(valid_BxL, axis=1)
  return jnp.clip(jnp.ceil(r_B * num_valid_B).astype(jnp.int32), jnp.minimum(num_valid_B, 1),
                          num_valid_B)


def _choose(rng: jax.Array, valid_BxL: jax.Array, num_mask_B: jax.Array) -> jax.Array:
  """Masks num_mask valid tokens per row, chosen uniformly at random."""
  scores_BxL = jnp.where(valid_BxL, jax.random.uniform(rng, valid_BxL.shape), 2.0)
  ranks_BxL = jnp.argsort(jnp.argsort(scores_BxL, axis=1), axis=1)
  return ranks_BxL < num_mask_B[:, None]


def sample_masks(rng: jax.Array, batch: Batch, settings: MaskingLoss,
                         text_pads: str = "masked") -> tuple[jax.Array, jax.Array]:
  """Which tokens to mask: (masked_image_BxLi, masked_text_BxLt), both bool.

  Valid tokens: every image token of an example with an image, every text slot of an
  example with text (`text_slots`: its real tokens, or all positions with
  text_pads="tokens"). Paired and image-only examples draw r = mask_ratio(schedule, u),
  u ~ U[0, 1), with the decoding schedules of upgen/sampling/mask_schedule.py (one set of
  names for both: "linear" is r = 1 - u, "cosine" r = cos(pi/2 u)); text-only examples use
  text_only_mask_ratio. ceil(r * num_valid) (at least one) valid tokens are masked, chosen
  uniformly at random: with paired_masking="joint" over the example's joint sequence; with
  "independent" the image and the text separately, each paired example doing one of the two
  sampling tasks: with probability paired_text_mask_prob the image->text task (its caption
  masked by its own r' = mask_ratio(schedule, u'), down to every slot, beside its whole
  image; with caption_task_keeps_image=False the image is masked by r too), else the
  text->image task (its image masked by r beside its whole caption).
  """
  has_image_B = jnp.asarray(batch["has_image"], bool)
  has_text_B = jnp.asarray(batch["has_text"], bool)
  li = batch["image_tokens"].shape[1]
  image_valid_BxLi = jnp.broadcast_to(has_image_B[:, None], batch["image_tokens"].shape)
  text_valid_BxLt = text_slots(batch["text_mask"], text_pads) & has_text_B[:, None]
  ratio_rng, text_ratio_rng, order_rng, text_order_rng = jax.random.split(rng, 4)
  ratio = lambda rng, valid_BxL: mask_schedule.mask_ratio(
      settings.mask_schedule, jax.random.uniform(rng, has_image_B.shape),
      jnp.sum(valid_BxL, axis=1))
  r_B = jnp.where(has_image_B, ratio(ratio_rng, image_valid_BxLi),
                  settings.text_only_mask_ratio)
  if settings.paired_masking == "joint":
    valid_BxL = jnp.concatenate([image_valid_BxLi, text_valid_BxLt], axis=1)
    masked_BxL = _choose(order_rng, valid_BxL, _num_to_mask(r_B, valid_BxL))
    return masked_BxL[:, :li], masked_BxL[:, li:]
  caption_task_B = jax.random.bernoulli(jax.random.fold_in(text_ratio_rng, 1),
                                        settings.paired_text_mask_prob, has_image_B.shape)
  num_image_B = _num_to_mask(r_B, image_valid_BxLi)
  if settings.caption_task_keeps_image:
    num_image_B = jnp.where(caption_task_B & has_text_B, 0, num_image_B)
  masked_image_BxLi = _choose(order_rng, image_valid_BxLi, num_image_B)
  text_r_B = jnp.where(has_image_B, ratio(text_ratio_rng, text_valid_BxLt), r_B)
  num_mask_B = jnp.where(has_image_B & ~caption_task_B, 0,
                         _num_to_mask(text_r_B, text_valid_BxLt))
  return masked_image_BxLi, _choose(text_order_rng, text_valid_BxLt, num_mask_B)


def _masked_mean(values_BxL: jax.Array, weights_BxL: jax.Array) -> jax.Array:
  weights_BxL = weights_BxL.astype(jnp.float32)
  return jnp.sum(values_BxL * weights_BxL) / jnp.maximum(jnp.sum(weights_BxL), 1.0)


def loss_fn(params, batch: Batch, rng: jax.Array, *, model: UPGen, settings: MaskingLoss,
            train: bool, step=None):
  """Masked-token cross-entropy -> (total loss, metrics); `params` is the "params" collection.
  (`step` is unused: the loss does not change over training.)

  Draws the masks with `sample_masks` and scores them with `masked_loss`.
  """
  del step
  mask_rng, dropout_rng = jax.random.split(rng)
  masks = sample_masks(mask_rng, batch, settings, model.config.text_pads)
  return masked_loss(params, batch, masks, dropout_rng, model=model, settings=settings,
                     train=train)


def masked_loss(params, batch: Batch, masks: tuple[jax.Array, jax.Array], dropout_rng: jax.Array,
                *, model: UPGen, settings: MaskingLoss, train: bool):
  """Cross-entropy on the masked positions `masks` = (masked_image_BxLi, masked_text_BxLt).

  Four terms, each a mean over its own masked tokens in the batch: paired image, paired text,
  unpaired image (image-only examples), unpaired text (text-only examples), combined with
  config.loss.{paired,unpaired}_{image,text}_weight.
  """
  cfg = model.config
  image_BxLi = jnp.asarray(batch["image_tokens"], jnp.int32)
  text_BxLt = jnp.asarray(batch["text_tokens"], jnp.int32)
  has_image_B = jnp.asarray(batch["has_image"], bool)
  has_text_B = jnp.asarray(batch["has_text"], bool)
  text_valid_BxLt = text_slots(batch["text_mask"], cfg.text_pads) & has_text_B[:, None]
  # Only valid tokens count as masked (absent images, and text padding unless it is tokens,
  # never do).
  masked_image_BxLi = jnp.asarray(masks[0], bool) & has_image_B[:, None]
  masked_text_BxLt = jnp.asarray(masks[1], bool) & text_valid_BxLt
  image_BxLixE, text_BxLtxE = model.apply(
      {"params": params}, jnp.where(masked_image_BxLi, cfg.image_mask_id, image_BxLi),
      jnp.where(masked_text_BxLt, cfg.text_mask_id, text_BxLt), text_valid_BxLt, has_image_B,
      train=train, features=True, rngs={"dropout": dropout_rng})
  head_ce = lambda x, name, labels, where, vocab: head_loss.masked_cross_entropy(
      x, head_loss.unembed_params(params, name), labels, where, vocab_size=vocab,
      dtype=cfg.dtype, capacity=settings.logits_capacity, chunks=settings.logits_chunks)
  ce_image_BxLi, correct_image = head_ce(image_BxLixE, "image_head", image_BxLi,
                                         masked_image_BxLi, cfg.image_vocab_size)
  ce_text_BxLt, correct_text = head_ce(text_BxLtxE, "text_head", text_BxLt, masked_text_BxLt,
                                       cfg.text_vocab_size)
  paired_Bx1 = (has_image_B & has_text_B)[:, None]
  losses = {
      "loss_image": _masked_mean(ce_image_BxLi, masked_image_BxLi & paired_Bx1),
      "loss_text": _masked_mean(ce_text_BxLt, masked_text_BxLt & paired_Bx1),
      "loss_unpaired_image": _masked_mean(ce_image_BxLi, masked_image_BxLi & ~has_text_B[:, None]),
      "loss_unpaired_text": _masked_mean(ce_text_BxLt, masked_text_BxLt & ~has_image_B[:, None]),
  }
  total = (settings.paired_image_weight * losses["loss_image"]
           + settings.paired_text_weight * losses["loss_text"]
           + settings.unpaired_image_weight * losses["loss_unpaired_image"]
           + settings.unpaired_text_weight * losses["loss_unpaired_text"])
  metrics = dict(
      losses, loss=total,
      acc_image=_masked_mean(correct_image, masked_image_BxLi),
      acc_text=_masked_mean(correct_text, masked_text_BxLt),
      num_masked_image=jnp.sum(masked_image_BxLi).astype(jnp.float32),
      num_masked_text=jnp.sum(masked_text_BxLt).astype(jnp.float32))
  return total, metrics


def init_variables(model: UPGen, rng: jax.Array, batch: Batch) -> dict[str, Any]:
  return model.init({"params": rng}, jnp.asarray(batch["image_tokens"], jnp.int32),
                    jnp.asarray(batch["text_tokens"], jnp.int32),
                    jnp.asarray(batch["text_mask"], bool), jnp.asarray(batch["has_image"], bool),
                    train=False)


def sample_config(group: Any) -> SampleSettings:
  return schema.parse(SampleSettings, group, "config.sample")


def train_flops(c: UPGenConfig) -> flops.FlopCount:
  """Forward + backward FLOPs of one example over L = Li + Lt tokens: 6N x L, bidirectional
  attention 12 x layers x L^2 x E, image logits on image positions and text logits on text
  positions (see upgen/flops.py)."""
  return flops.Transformer(
      c.num_layers, c.emb_dim, c.mlp_dim, c.image_seq_len + c.text_seq_len, causal=False,
      heads=((c.image_seq_len, c.image_vocab_size), (c.text_seq_len, c.text_vocab_size))
  ).train_flops()


def sample_cost(c: UPGenConfig, s: SampleSettings, batch_size: int, param_bytes: int
                ) -> families.SampleCost:
  """MaskGIT text->image: every step runs the whole [image; text] sequence forward, and with
  guidance the image alone too (the unconditional stream, upgen_sampler.guided_logits);
  the text head is not run. Reads the parameters once per step."""
  forward_of = lambda length: flops.Transformer(
      c.num_layers, c.emb_dim, c.mlp_dim, length, causal=False,
      heads=((c.image_seq_len, c.image_vocab_size),)).train_flops().total / 3
  cond = forward_of(c.image_seq_len + c.text_seq_len)
  uncond = forward_of(c.image_seq_len) if s.guidance_scale > 0 else 0.0
  forward = cond + uncond
  return families.SampleCost(
      flops=s.num_steps * batch_size * forward,
      bytes=float(s.num_steps * param_bytes),
      note=(f"{s.num_steps} steps x {batch_size} x {forward / 1e9:.3f} GFLOP forward "
            f"({cond / 1e9:.3f} with the caption + {uncond / 1e9:.3f} the image alone); "
            f"{s.num_steps} x {param_bytes / 1e6:.1f} MB of parameters"))


def image_nll(params, batch: Batch, *, model: UPGen) -> jax.Array:
  """`upgen eval nll`: -log p(image | caption) per example, one token per step in raster
  order (upgen_sampler.raster_image_nll)."""
  return upgen_sampler.raster_image_nll(
      params, jnp.asarray(batch["image_tokens"], jnp.int32),
      jnp.asarray(batch["text_tokens"], jnp.int32), jnp.asarray(batch["text_mask"], bool),
      model=model)


def image_features(params, image_tokens_BxLi, *, model: UPGen) -> list[jax.Array]:
  """`upgen eval probe`: per transformer block, the mean over image positions of its output
  for the image alone (the caption all [PAD] and kept out of attention, so it cannot give a
  label away), B x E each, first block first."""
  cfg = model.config
  if cfg.scan_layers:
    raise errors.ConfigError("upgen eval probe reads each block's output: the run's "
                             "config.model.scan_layers=true stacks them; probe an unscanned run")
  image_BxLi = jnp.asarray(image_tokens_BxLi, jnp.int32)
  b = image_BxLi.shape[0]
  text_BxLt = jnp.full((b, cfg.text_seq_len), cfg.text_pad_id, jnp.int32)
  blocks = layers.module_outputs(
      model, params, image_BxLi, text_BxLt, jnp.zeros((b, cfg.text_seq_len), bool),
      jnp.ones((b,), bool), features=True, of=layers.TransformerBlock)
  li = image_BxLi.shape[1]
  return [jnp.mean(blocks[f"encoder/layers_{i}"][:, :li].astype(jnp.float32), axis=1)
          for i in range(cfg.num_layers)]


def sample_images(params, text_tokens_BxLt, text_mask_BxLt, rng, *, model: UPGen,
                  settings: SampleSettings) -> jax.Array:
  """Text->image token ids BxLi, MaskGIT decoding with `settings`."""
  return upgen_sampler.text_to_image(params, model, text_tokens_BxLt, text_mask_BxLt, rng,
                                     settings)


def inpaint(params, image_tokens_BxLi, known_BxLi, text_tokens_BxLt, text_mask_BxLt, rng, *,
            model: UPGen, settings: SampleSettings) -> jax.Array:
  """Regenerates the unknown image tokens from the caption and the known ones."""
  return upgen_sampler.inpaint(params, model, image_tokens_BxLi, known_BxLi, text_tokens_BxLt,
                               text_mask_BxLt, rng, settings)


def unconditional_images(params, rng, *, model: UPGen, settings: SampleSettings,
                         num: int) -> jax.Array:
  """`num` images with no caption."""
  return upgen_sampler.unconditional_image(params, model, num, rng, settings)


def caption_images(params, image_tokens_BxLi, rng, *, model: UPGen,
                   settings: SampleSettings) -> jax.Array:
  """Image->text token ids BxLt: the caption, then [PAD]s (text_pads="tokens")."""
  return upgen_sampler.image_to_text(params, model, image_tokens_BxLi, rng, settings)


def caption_trained(settings: MaskingLoss) -> bool:
  """Independent masking with no paired example given the image->text task teaches no
  captioning (the quickstart's recipe for folders of names, upgen/tools/recipe.py)."""
  return settings.paired_masking == "joint" or settings.paired_text_mask_prob > 0


FAMILY = Family(
    name="upgen", reads=readers.TOKEN_RECORDS, model_config=model_config,
    loss_config=loss_config, make_model=UPGen, init_variables=init_variables,
    loss_fn=loss_fn, sample_config=sample_config, sample_images=sample_images,
    inpaint=inpaint, unconditional_images=unconditional_images,
    caption_images=caption_images, caption_trained=caption_trained, image_nll=image_nll,
    image_features=image_features,
    train_flops=train_flops,
    sample_cost=sample_cost)
