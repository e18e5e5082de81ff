"""CLIP: a contrastive image-text scorer, trained by the same trainer on pixel records
(`upgen tokenize --pixels`), used to score and rerank every family's samples.

Architecture (OpenAI CLIP's, as transformers' FlaxCLIPModel computes it, so a pretrained
CLIP can be imported later):
- image tower, a ViT: patches of config.model.patch_size by a convolution without bias, a
  learned class embedding in front, learned positions, a LayerNorm before the blocks
  ("pre_layrnorm"), pre-LN blocks, a LayerNorm on the class token, a projection (no bias)
  to config.model.embed_dim. Pixels are scaled to [0, 1] and normalized with CLIP's
  per-channel mean and std.
- text tower: [BOS] caption [EOS] (each where the tokenizer has one), token and learned
  position embeddings, causal pre-LN blocks (padding keys masked), a final LayerNorm, the
  state at the last real token ([EOS]), a projection (no bias).
- blocks: LayerNorm epsilon 1e-5, quick_gelu MLP (x * sigmoid(1.702 x)).

Loss: CLIP's symmetric cross-entropy over the global batch (image i's caption is text i;
every other caption in the batch is a negative, whichever device holds it: the logits are
one B x B matmul over the sharded batch, so the partitioner gathers the features), scaled
by a learned temperature exp(logit_scale) (init 1/0.07, capped at 100). Examples without
both an image and a caption take no part. Metrics: loss, image->text and text->image
in-batch top-1 accuracy, the temperature.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from flax import linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from upgen import errors
from upgen import families
from upgen import flops
from upgen import schema
from upgen.data import readers
from upgen.data.spec import DataSpec
from upgen.families import Batch
from upgen.families import Family
from upgen.models import clip_hf
from upgen.models import layers

# OpenAI CLIP's image normalization (transformers' CLIPImageProcessor).
PIXEL_MEAN = (0.48145466, 0.4578275, 0.40821073)
PIXEL_STD = (0.26862954, 0.26130258, 0.27577711)
MAX_SCALE = 100.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class ClipConfig(layers.TransformerConfig):
  """config.model: the text tower in TransformerConfig's fields (num_layers, emb_dim, ...),
  the image tower in vision_*, plus the sizes the data fixes."""
  norm_eps: float = 1e-5
  activation: str = "quick_gelu"
  patch_size: int = 4
  vision_layers: int = 4
  vision_width: int = 128
  vision_heads: int = 4
  vision_mlp_dim: int = 512
  embed_dim: int = 128  # The joint space both towers project to.
  max_positions: int = 0  # Text position table rows (CLIP: 77; 0: the captions' length).
  image_size: int
  text_vocab_size: int
  text_seq_len: int
  text_pad_id: int
  text_bos_id: int = -1  # Put before the caption when the tokenizer has one (CLIP's
  text_eos_id: int = -1  # <|startoftext|> ... <|endoftext|>), the EOS after it.

  def __post_init__(self):
    super().__post_init__()
    if self.image_size % self.patch_size:
      raise errors.ConfigError(f"config.model.patch_size={self.patch_size} does not divide the "
                               f"records' image size {self.image_size}")
    if self.vision_width % self.vision_heads:
      raise errors.ConfigError(f"config.model.vision_width={self.vision_width} is not "
                               f"divisible by config.model.vision_heads={self.vision_heads}")
    if self.max_positions and self.max_positions < self.text_len:
      raise errors.ConfigError(f"config.model.max_positions={self.max_positions} < the "
                               f"caption length {self.text_len}")

  @property
  def num_patches(self) -> int:
    return (self.image_size // self.patch_size) ** 2

  @property
  def text_len(self) -> int:
    return self.text_seq_len + (self.text_bos_id >= 0) + (self.text_eos_id >= 0)

  def text_stack(self) -> layers.TransformerConfig:
    return self.stack(causal=True, cross_attention=False, decode=False)

  def vision_stack(self) -> layers.TransformerConfig:
    return self.stack(num_layers=self.vision_layers, emb_dim=self.vision_width,
                      num_heads=self.vision_heads, mlp_dim=self.vision_mlp_dim, causal=False,
                      cross_attention=False, decode=False)


def model_config(group: Any, spec: DataSpec) -> ClipConfig:
  given = spec.pixel_sizes("a CLIP scorer")
  special = lambda i: i if 0 <= i < spec.text_vocab_size else -1
  given.update(text_bos_id=special(spec.text_bos_id), text_eos_id=special(spec.text_eos_id))
  return schema.parse(ClipConfig, group, "config.model", given=given,
                      skip=families.MODEL_SELECTORS)


def text_inputs(text_BxLt, valid_BxLt, cfg: ClipConfig) -> tuple[jax.Array, jax.Array]:
  """(ids, valid) of the text tower: [BOS] caption [EOS] (each where the tokenizer has
  one), padded to cfg.text_len; the caption's valid tokens are taken as a prefix."""
  return layers.frame_caption(text_BxLt, valid_BxLt, cfg.text_pad_id, cfg.text_bos_id,
                              cfg.text_eos_id)


class Clip(nn.Module):
  config: ClipConfig

  def setup(self):
    cfg = self.config
    v = cfg.vision_stack()
    emb = lambda names: nn.with_logical_partitioning(layers.embed_init, names)
    self.patch_embed = nn.Conv(
        v.emb_dim, (cfg.patch_size, cfg.patch_size), strides=cfg.patch_size, use_bias=False,
        dtype=cfg.dtype, param_dtype=cfg.param_dtype,
        kernel_init=nn.with_logical_partitioning(layers.dense_init,
                                                 (None, None, None, "embed")))
    self.class_embed = self.param("class_embed", emb(("embed",)), (v.emb_dim,),
                                  cfg.param_dtype)
    self.vision_pos = self.param("vision_pos", emb((None, "embed")),
                                 (cfg.num_patches + 1, v.emb_dim), cfg.param_dtype)
    self.vision_pre_norm = layers.LayerNorm(cfg.dtype, cfg.param_dtype, cfg.norm_eps)
    self.vision = layers.TransformerStack(v)
    self.vision_post_norm = layers.LayerNorm(cfg.dtype, cfg.param_dtype, cfg.norm_eps)
    self.vision_proj = nn.Dense(
        cfg.embed_dim, use_bias=False, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
        kernel_init=nn.with_logical_partitioning(layers.dense_init, ("embed", "mlp")))
    self.text_embed = layers.Embed(layers.pad_vocab(cfg.text_vocab_size), cfg.emb_dim,
                                   dtype=cfg.dtype, param_dtype=cfg.param_dtype)
    self.text_pos = self.param("text_pos", emb((None, "embed")),
                               (cfg.max_positions or cfg.text_len, cfg.emb_dim),
                               cfg.param_dtype)
    self.text = layers.TransformerStack(cfg.text_stack())
    self.text_norm = layers.LayerNorm(cfg.dtype, cfg.param_dtype, cfg.norm_eps)
    self.text_proj = nn.Dense(
        cfg.embed_dim, use_bias=False, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
        kernel_init=nn.with_logical_partitioning(layers.dense_init, ("embed", "mlp")))
    self.logit_scale = self.param("logit_scale", nn.initializers.constant(np.log(1 / 0.07)),
                                  (), jnp.float32)

  def encode_image(self, pixels_BxSxSx3: jax.Array, *, train: bool = False) -> jax.Array:
    """uint8 images -> projected features BxD (not normalized)."""
    cfg = self.config
    x = jnp.asarray(pixels_BxSxSx3, jnp.float32) / 255.0
    x = ((x - jnp.asarray(PIXEL_MEAN)) / jnp.asarray(PIXEL_STD)).astype(cfg.dtype)
    patches_BxPxE = self.patch_embed(x).reshape(x.shape[0], cfg.num_patches, -1)
    cls_Bx1xE = jnp.broadcast_to(jnp.asarray(self.class_embed, cfg.dtype),
                                 (x.shape[0], 1, patches_BxPxE.shape[-1]))
    h = jnp.concatenate([cls_Bx1xE, patches_BxPxE], axis=1)
    h = self.vision_pre_norm(h + jnp.asarray(self.vision_pos, cfg.dtype)[None])
    h = nn.with_logical_constraint(h, ("batch", "length", "embed"))
    h = self.vision(h, deterministic=not train)
    return self.vision_proj(self.vision_post_norm(h[:, 0])).astype(jnp.float32)

  def encode_text(self, text_BxLt: jax.Array, valid_BxLt: jax.Array, *,
                  train: bool = False) -> jax.Array:
    """Caption ids (+ valid mask, as records give them) -> projected features BxD."""
    cfg = self.config
    ids, valid = text_inputs(text_BxLt, valid_BxLt, cfg)
    h = self.text_embed(ids) + jnp.asarray(self.text_pos[:ids.shape[1]], cfg.dtype)[None]
    h = self.text(h, layers.key_mask(valid | (jnp.arange(ids.shape[1])[None] == 0)),
                  deterministic=not train)
    h = self.text_norm(h)
    last_B = jnp.maximum(jnp.sum(valid, axis=1) - 1, 0)
    pooled = jnp.take_along_axis(h, last_B[:, None, None], axis=1)[:, 0]
    return self.text_proj(pooled).astype(jnp.float32)

  def __call__(self, pixels, text_BxLt, valid_BxLt, *, train: bool = False):
    """(image features, text features, logit scale)."""
    return (self.encode_image(pixels, train=train),
            self.encode_text(text_BxLt, valid_BxLt, train=train), self.logit_scale)


def normalize(x: jax.Array) -> jax.Array:
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-6)


@dataclasses.dataclass(frozen=True)
class ClipLoss:
  """config.loss: the temperature cap, and hard negatives (`one_token_swaps`) per caption."""
  max_scale: float = MAX_SCALE
  hard_negatives: int = 0

  def __post_init__(self):
    if self.max_scale <= 0:
      raise errors.ConfigError(f"config.loss.max_scale={self.max_scale}: must be > 0")
    if self.hard_negatives < 0:
      raise errors.ConfigError(f"config.loss.hard_negatives={self.hard_negatives}: must be >= 0")


def one_token_swaps(rng: jax.Array, text_BxL: jax.Array, valid_BxL: jax.Array, k: int
                    ) -> tuple[jax.Array, jax.Array]:
  """k hard negatives per caption, one token away: caption i with the token at a random
  position replaced by the token another caption of the batch, of the same length, has
  there. Captions of one template differ in one attribute this way ("a small red circle on
  the left" -> "a small red square on the left"); natural captions get a word another
  caption uses in that place. -> (negatives B x k x L, ok B x k: False where caption i has
  no other caption of its length that differs from it, whose row is then a copy)."""
  b = text_BxL.shape[0]
  length_B = jnp.sum(valid_BxL, axis=1)
  same_BxB = (length_B[:, None] == length_B[None, :]) & ~jnp.eye(b, dtype=bool)
  differ_BxBxL = (text_BxL[:, None] != text_BxL[None, :]) & valid_BxL[:, None]
  partner_ok_BxB = same_BxB & jnp.any(differ_BxBxL, axis=-1)
  negatives, oks = [], []
  for key in jax.random.split(rng, k):
    pick, place = jax.random.split(key)
    # A uniform choice among the allowed entries: Gumbel noise, the others at -inf.
    partner_B = jnp.argmax(jnp.where(partner_ok_BxB, jax.random.gumbel(pick, (b, b)),
                                     -jnp.inf), axis=1)
    ok_B = jnp.any(partner_ok_BxB, axis=1)
    where_BxL = jnp.take_along_axis(differ_BxBxL, partner_B[:, None, None], axis=1)[:, 0]
    position_B = jnp.argmax(jnp.where(where_BxL, jax.random.gumbel(place, where_BxL.shape),
                                      -jnp.inf), axis=1)
    swapped_B = text_BxL[partner_B, position_B]
    at_BxL = jnp.arange(text_BxL.shape[1])[None] == position_B[:, None]
    negatives.append(jnp.where(at_BxL & ok_B[:, None], swapped_B[:, None], text_BxL))
    oks.append(ok_B)
  return jnp.stack(negatives, axis=1), jnp.stack(oks, axis=1)


def loss_config(group: Any, model_cfg: ClipConfig) -> ClipLoss:
  del model_cfg
  return schema.parse(ClipLoss, group, "config.loss")


def loss_fn(params, batch: Batch, rng: jax.Array, *, model: Clip, settings: ClipLoss,
            train: bool, step=None):
  """Symmetric contrastive cross-entropy over the global batch -> (loss, metrics)."""
  del step
  valid_BxLt = jnp.asarray(batch["text_mask"], bool)
  image_BxD, text_BxD, scale = model.apply(
      {"params": params}, batch["pixels"], batch["text_tokens"], valid_BxLt, train=train,
      rngs={"dropout": rng})
  pair_B = jnp.asarray(batch["has_image"], bool) & jnp.asarray(batch["has_text"], bool)
  temperature = jnp.exp(jnp.minimum(scale, np.log(settings.max_scale)))
  image_BxD = normalize(image_BxD)
  logits_BxB = temperature * image_BxD @ normalize(text_BxD).T
  logits_BxB = jnp.where(pair_B[None, :] & pair_B[:, None], logits_BxB, -1e9)
  labels = jnp.arange(logits_BxB.shape[0])
  n = jnp.maximum(jnp.sum(pair_B), 1).astype(jnp.float32)
  mean = lambda x_B: jnp.sum(jnp.where(pair_B, x_B, 0.0)) / n
  i2t_logits = logits_BxB
  metrics = {}
  k = settings.hard_negatives
  if k:  # Each image also against its own caption's hard negatives (image -> text only).
    b, length = batch["text_tokens"].shape
    neg_BxKxL, ok_BxK = one_token_swaps(jax.random.fold_in(rng, 1),
                                        jnp.asarray(batch["text_tokens"]), valid_BxLt, k)
    neg_BKxD = model.apply({"params": params}, neg_BxKxL.reshape(b * k, length),
                           jnp.repeat(valid_BxLt, k, axis=0), train=train,
                           method=Clip.encode_text, rngs={"dropout": jax.random.fold_in(rng, 2)})
    neg_BxK = temperature * jnp.einsum("bd,bkd->bk", image_BxD,
                                       normalize(neg_BKxD).reshape(b, k, -1))
    neg_BxK = jnp.where(ok_BxK & pair_B[:, None], neg_BxK, -1e9)
    i2t_logits = jnp.concatenate([logits_BxB, neg_BxK], axis=1)
    own_B = jnp.diagonal(logits_BxB)
    metrics["acc_hard_negatives"] = (
        jnp.sum(jnp.where(pair_B[:, None] & ok_BxK, own_B[:, None] > neg_BxK, False))
        / jnp.maximum(jnp.sum(pair_B[:, None] & ok_BxK), 1))
  i2t = optax.softmax_cross_entropy_with_integer_labels(i2t_logits, labels)
  t2i = optax.softmax_cross_entropy_with_integer_labels(logits_BxB.T, labels)
  loss = (mean(i2t) + mean(t2i)) / 2
  hits = lambda l: (jnp.argmax(l, axis=1) == labels).astype(jnp.float32)
  return loss, dict(loss=loss, acc_image_to_text=mean(hits(logits_BxB)),
                    acc_text_to_image=mean(hits(logits_BxB.T)), temperature=temperature,
                    num_pairs=n, **metrics)


def init_variables(model: Clip, rng: jax.Array, batch: Batch) -> dict[str, Any]:
  return model.init({"params": rng}, jnp.asarray(batch["pixels"]),
                    jnp.asarray(batch["text_tokens"], jnp.int32),
                    jnp.asarray(batch["text_mask"], bool), train=False)


def train_flops(c: ClipConfig) -> flops.FlopCount:
  """Both towers (bidirectional ViT over the class token and the patches, causal text over
  the caption), the patch embedding, the two projections; the B x B logits are left out
  (2 x B x D per example: under 0.1% at these sizes)."""
  v = c.vision_stack()
  image = flops.Transformer(v.num_layers, v.emb_dim, v.mlp_dim, c.num_patches + 1,
                            causal=False).train_flops()
  text = flops.Transformer(c.num_layers, c.emb_dim, c.mlp_dim, c.text_len,
                           causal=True).train_flops()
  patch = 6.0 * c.num_patches * 3 * c.patch_size ** 2 * v.emb_dim
  proj = 6.0 * (v.emb_dim + c.emb_dim) * c.embed_dim
  return flops.FlopCount(
      tuple((f"image {name}", f, formula) for name, f, formula in image.terms
            if name != "output heads") +
      tuple((f"text {name}", f, formula) for name, f, formula in text.terms
            if name != "output heads") +
      (("patch embed", patch, f"6 x {c.num_patches} patches x 3 x {c.patch_size}^2 x "
        f"{v.emb_dim}"),
       ("projections", proj, f"6 x ({v.emb_dim} + {c.emb_dim}) x {c.embed_dim}")))


PARAM_GROUPS = {
    "image": ("patch_embed", "class_embed", "vision_pos", "vision_pre_norm", "vision",
              "vision_post_norm", "vision_proj"),
    "text": ("text_embed", "text_pos", "text", "text_norm", "text_proj"),
}

FAMILY = Family(
    name="clip", reads=readers.PIXEL_RECORDS, model_config=model_config,
    loss_config=loss_config, make_model=Clip, init_variables=init_variables, loss_fn=loss_fn,
    train_flops=train_flops, param_groups=PARAM_GROUPS, import_hf=clip_hf.import_hf)
