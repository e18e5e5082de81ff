"""BART-style encoder-decoder: a text encoder and a decoder that writes image codes (the
DALL-E mini recipe), with BART's architecture as a config choice so pretrained weights mean
what they meant.

Encoder: [BOS] caption [EOS] (the text tokenizer's ids, BART's <s> ... </s>; so an empty
caption, the unconditional stream of guidance, still has two tokens to attend to),
bidirectional, padding kept out of attention by a key mask.

Decoder: causal self-attention over `decoder_inputs(codes)` = [decoder-start; codes[:-1]]
(shifted right: output i predicts code i from codes < i; the public attempt this family
comes from skipped the shift, and its model copied its targets) and cross-attention to the
encoder output. Input vocabulary: the Vi image codes and decoder-start (id Vi). Loss:
cross-entropy on every image code of examples with an image; caption dropout
(config.loss.caption_dropout) trains the unconditional stream.

config.loss.objective="masked_text" pretrains the encoder alone on captions (of paired or
text-only records): a share of each caption's tokens is corrupted (BERT's recipe: mostly the
tokenizer's [MASK]) and predicted from the encoder output through the tied caption embedding. Such a run is a
`config.train.init_from` directory whose encoder starts a text->image run
(`config.train.init_groups=encoder`).

config.model.architecture:
  "bart"   BART exactly (transformers' FlaxBart): post-LN blocks with LayerNorm eps 1e-5,
           learned positions looked up at position + 2, LayerNorm on the embeddings, exact
           (erf) GELU, embeddings times sqrt(d) when scale_embedding, no final LayerNorm.
  "preln"  for training from scratch: pre-LN blocks, fixed sin-cos positions (1D over the
           caption, 2D over the image grid), a final LayerNorm after each stack.

Sampling: KV-cache decoding with the encoder run once per prompt and its keys and values
cached in every cross-attention (upgen/sampling/ar_sampler.py).
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
from upgen.models import bart_hf
from upgen.models import layers
from upgen.models import positions
from upgen.sampling import ar_sampler
from upgen.sampling.settings import SampleSettings

ARCHITECTURES = {
    "bart": {"norm_position": "post", "norm_eps": 1e-5, "activation": "gelu"},
    "preln": {},
}
POSITION_OFFSET = 2  # BART looks its learned positions up at position + 2.


@dataclasses.dataclass(frozen=True, kw_only=True)
class BartConfig(layers.TransformerConfig):
  """The architecture (config.model; num_layers counts decoder blocks) and the sizes the
  data fixes."""
  encoder_layers: int
  architecture: str = "preln"
  scale_embedding: bool = False  # Token embeddings times sqrt(emb_dim) (BART: config flag).
  max_positions: int = 0  # "bart": rows of the learned caption position table (0: as needed).
  image_vocab_size: int
  image_seq_len: int
  image_grid_width: int
  text_vocab_size: int
  text_seq_len: int
  text_pad_id: int
  text_bos_id: int
  text_eos_id: int
  text_mask_id: int = -1  # The tokenizer's [MASK] (-1: none), for loss.objective=masked_text.

  def __post_init__(self):
    super().__post_init__()
    if self.architecture not in ARCHITECTURES:
      raise errors.ConfigError(f"config.model.architecture={self.architecture!r}: choose one "
                               f"of {sorted(ARCHITECTURES)}")
    if self.encoder_layers < 0:
      raise errors.ConfigError(f"config.model.encoder_layers={self.encoder_layers}: must be >= 0")
    if self.max_positions and self.max_positions < self.encoder_len:
      raise errors.ConfigError(
          f"config.model.max_positions={self.max_positions} is shorter than the encoder input "
          f"({self.encoder_len}: [BOS] + config.data.text_seq_len + [EOS])")
    if self.image_grid_width < 1 or self.image_seq_len % self.image_grid_width:
      raise errors.ConfigError(f"image_seq_len={self.image_seq_len} is not a grid of "
                               f"image_grid_width={self.image_grid_width} columns")
    if self.architecture == "preln" and self.emb_dim % 4:
      raise errors.ConfigError(f"config.model.emb_dim={self.emb_dim}: the 2D sin-cos image "
                               "positions need a multiple of 4")

  @property
  def encoder_len(self) -> int:
    return self.text_seq_len + 2

  @property
  def start_id(self) -> int:
    """Decoder-start: the one input id past the image codes."""
    return self.image_vocab_size

  def encoder_stack(self) -> layers.TransformerConfig:
    return self.stack(num_layers=self.encoder_layers, causal=False, cross_attention=False,
                      decode=False)

  def decoder_stack(self) -> layers.TransformerConfig:
    return self.stack(causal=True, cross_attention=True)


def model_config(group: Any, spec: DataSpec) -> BartConfig:
  architecture = (group.get("architecture") if hasattr(group, "get") else None) or "preln"
  sizes = spec.token_sizes()
  given = {**sizes, **spec.special_ids("bos", "eos"),
           **ARCHITECTURES.get(architecture, {})}
  return schema.parse(BartConfig, group, "config.model", given=given,
                      skip=families.MODEL_SELECTORS)


def encoder_inputs(text_BxLt: jax.Array, text_valid_BxLt: jax.Array, cfg: BartConfig
                   ) -> tuple[jax.Array, jax.Array]:
  """([BOS] caption [EOS] [PAD]..., valid) of length Lt + 2; the caption is its valid
  prefix (text_valid marks it; an all-invalid row is the empty caption)."""
  return layers.frame_caption(text_BxLt, text_valid_BxLt, cfg.text_pad_id, cfg.text_bos_id,
                              cfg.text_eos_id)


def decoder_inputs(codes_BxLi: jax.Array, cfg: BartConfig) -> jax.Array:
  """[decoder-start; codes[:-1]]: the teacher-forced decoder input, shifted right so that
  output i predicts code i from the codes before it."""
  start_Bx1 = jnp.full((codes_BxLi.shape[0], 1), cfg.start_id, jnp.int32)
  return jnp.concatenate([start_Bx1, codes_BxLi[:, :-1].astype(jnp.int32)], axis=1)


class Bart(nn.Module):
  """Training: (text ids, text valid, image codes) -> image logits BxLixVi.
  Decoding (config.decode): `prefill` (encoder + decoder-start), then `feed_image_token`."""
  config: BartConfig

  def setup(self):
    cfg = self.config
    embed = lambda n, name: layers.Embed(layers.pad_vocab(n), cfg.emb_dim, dtype=cfg.dtype,
                                         param_dtype=cfg.param_dtype, name=name)
    norm = lambda name: layers.LayerNorm(cfg.dtype, cfg.param_dtype, cfg.norm_eps, name=name)
    self.text_embed = embed(cfg.text_vocab_size, "text_embed")
    self.image_embed = embed(cfg.image_vocab_size + 1, "image_embed")
    if cfg.architecture == "bart":
      pos = lambda n: nn.with_logical_partitioning(layers.embed_init, (None, "embed"))
      self.text_pos = self.param("text_pos", pos(None), ((cfg.max_positions or cfg.encoder_len)
                                                         + POSITION_OFFSET, cfg.emb_dim),
                                 cfg.param_dtype)
      self.image_pos = self.param("image_pos", pos(None),
                                  (cfg.image_seq_len + POSITION_OFFSET, cfg.emb_dim),
                                  cfg.param_dtype)
      self.encoder_embed_norm = norm("encoder_embed_norm")
      self.decoder_embed_norm = norm("decoder_embed_norm")
    else:
      self.encoder_norm = norm("encoder_norm")
      self.decoder_norm = norm("decoder_norm")
    self.encoder = layers.TransformerStack(cfg.encoder_stack())
    self.decoder = layers.TransformerStack(cfg.decoder_stack())
    self.image_head = layers.Unembed(cfg.image_vocab_size, cfg.dtype, cfg.param_dtype)
    self.dropout = nn.Dropout(cfg.dropout_rate)

  def _embed(self, table: layers.Embed, ids_BxT: jax.Array, pos_TxE: jax.Array,
             embed_norm: str, train: bool) -> jax.Array:
    cfg = self.config
    x_BxTxE = table(ids_BxT)
    if cfg.scale_embedding:
      x_BxTxE = x_BxTxE * np.sqrt(cfg.emb_dim).astype(np.float32)
    x_BxTxE = (x_BxTxE + jnp.asarray(pos_TxE, cfg.dtype)[None]).astype(cfg.dtype)
    if cfg.architecture == "bart":
      x_BxTxE = getattr(self, embed_norm)(x_BxTxE)
    x_BxTxE = self.dropout(x_BxTxE, deterministic=not train)
    return nn.with_logical_constraint(x_BxTxE, ("batch", "length", "embed"))

  def _positions(self, kind: str, start, length: int) -> jax.Array:
    cfg = self.config
    if cfg.architecture == "bart":
      table = self.text_pos if kind == "text" else self.image_pos
      return jax.lax.dynamic_slice_in_dim(table, start + POSITION_OFFSET, length)
    if kind == "text":
      return jnp.asarray(positions.sinusoidal_1d(length, cfg.emb_dim))
    w = cfg.image_grid_width
    grid = positions.sinusoidal_2d(cfg.image_seq_len // w, w, cfg.emb_dim)
    return jax.lax.dynamic_slice_in_dim(jnp.asarray(grid), start, length)

  def encode(self, text_BxLt: jax.Array, text_valid_BxLt: jax.Array, *, train: bool = False
             ) -> tuple[jax.Array, jax.Array]:
    """(encoder output BxLencxE, key mask Bx1x1xLenc) of the captions."""
    cfg = self.config
    ids_BxL, valid_BxL = encoder_inputs(text_BxLt, text_valid_BxLt.astype(bool), cfg)
    x_BxLxE = self._embed(self.text_embed, ids_BxL, self._positions("text", 0, cfg.encoder_len),
                          "encoder_embed_norm", train)
    mask = layers.key_mask(valid_BxL)
    x_BxLxE = self.encoder(x_BxLxE, mask, deterministic=not train)
    if cfg.architecture == "preln":
      x_BxLxE = self.encoder_norm(x_BxLxE)
    return x_BxLxE, mask

  def masked_text_logits(self, text_BxLt: jax.Array, text_valid_BxLt: jax.Array, *,
                         train: bool = False) -> jax.Array:
    """Caption logits BxLtxVt of the encoder output at the caption's positions (between
    [BOS] and [EOS]), through the tied caption embedding."""
    cfg = self.config
    encoded_BxLxE, _ = self.encode(text_BxLt, text_valid_BxLt, train=train)
    logits_BxLtxV = self.text_embed.attend(encoded_BxLxE[:, 1:cfg.text_seq_len + 1])
    return logits_BxLtxV[..., :cfg.text_vocab_size].astype(jnp.float32)

  def decode_hidden(self, ids_BxT: jax.Array, start, encoded_BxSxE, encoded_mask, *,
                    train: bool = False) -> jax.Array:
    """Decoder output BxTxE of decoder inputs at image positions [start, start + T)."""
    cfg = self.config
    x_BxTxE = self._embed(self.image_embed, ids_BxT,
                          self._positions("image", start, ids_BxT.shape[1]),
                          "decoder_embed_norm", train)
    x_BxTxE = self.decoder(x_BxTxE, None, encoded_BxSxE, encoded_mask, deterministic=not train)
    if cfg.architecture == "preln":
      x_BxTxE = self.decoder_norm(x_BxTxE)
    return x_BxTxE

  def decode_logits(self, ids_BxT: jax.Array, start, encoded_BxSxE, encoded_mask, *,
                    train: bool = False) -> jax.Array:
    """Image logits BxTxVi of decoder inputs at image positions [start, start + T)."""
    return self.image_head(self.decode_hidden(ids_BxT, start, encoded_BxSxE, encoded_mask,
                                              train=train))

  def __call__(self, text_tokens_BxLt: jax.Array, text_valid_BxLt: jax.Array,
               image_tokens_BxLi: jax.Array, *, train: bool = False) -> jax.Array:
    cfg = self.config
    if (image_tokens_BxLi.shape[1], text_tokens_BxLt.shape[1]) != (cfg.image_seq_len,
                                                                   cfg.text_seq_len):
      raise ValueError(f"Bart got image/text lengths {image_tokens_BxLi.shape[1]}/"
                       f"{text_tokens_BxLt.shape[1]}, its config says {cfg.image_seq_len}/"
                       f"{cfg.text_seq_len}")
    encoded, mask = self.encode(text_tokens_BxLt, text_valid_BxLt, train=train)
    return self.decode_logits(decoder_inputs(image_tokens_BxLi, cfg), 0, encoded, mask,
                              train=train)

  # Decoding with the KV cache (config.decode), for upgen/sampling/ar_sampler.py.
  def allocate_cache(self, text_BxLt: jax.Array, text_valid_BxLt: jax.Array) -> jax.Array:
    """Sizes every cache: self-attention for all Li codes, cross-attention for the prompt."""
    encoded, mask = self.encode(text_BxLt, text_valid_BxLt)
    codes_BxLi = jnp.zeros((text_BxLt.shape[0], self.config.image_seq_len), jnp.int32)
    return self.decode_logits(codes_BxLi, 0, encoded, mask)

  def prefill(self, text_BxLt: jax.Array, text_valid_BxLt: jax.Array) -> jax.Array:
    """Encodes the prompts, caches the cross-attention keys and values, and feeds
    decoder-start: the logits of code 0, BxVi."""
    encoded, mask = self.encode(text_BxLt, text_valid_BxLt)
    start_Bx1 = jnp.full((text_BxLt.shape[0], 1), self.config.start_id, jnp.int32)
    return self.decode_logits(start_Bx1, 0, encoded, mask)[:, 0]

  def feed_image_token(self, tokens_B: jax.Array, i) -> jax.Array:
    """Feeds code i (decoder input position i + 1): the logits of code i + 1, BxVi."""
    return self.decode_logits(tokens_B.astype(jnp.int32)[:, None], i + 1, None, None)[:, 0]


def image_features(params, image_tokens_BxLi, *, model: Bart) -> list[jax.Array]:
  """`upgen eval probe`: per decoder block, the mean of its output over the positions that
  read image codes (decoder inputs 1..Li-1: code i-1 and the codes before it; position 0
  reads decoder-start only), the encoder fed the empty caption (its [BOS] [EOS] frame, so
  no label reaches the decoder through cross-attention), B x E each."""
  cfg = model.config
  if cfg.scan_layers:
    raise errors.ConfigError("upgen eval probe reads each decoder block: not with "
                             "config.model.scan_layers=true")
  image_BxLi = jnp.asarray(image_tokens_BxLi, jnp.int32)
  text_BxLt = jnp.zeros((image_BxLi.shape[0], cfg.text_seq_len), jnp.int32)
  blocks = layers.module_outputs(model, params, text_BxLt, jnp.zeros_like(text_BxLt, bool),
                                 image_BxLi, of=layers.TransformerBlock)
  return [jnp.mean(blocks[f"decoder/layers_{i}"][:, 1:].astype(jnp.float32), axis=1)
          for i in range(cfg.num_layers)]


OBJECTIVES = ("image", "masked_text")


@dataclasses.dataclass(frozen=True)
class BartLoss:
  """config.loss: the objective and its settings."""
  caption_dropout: float = 0.1  # Captions replaced by the empty caption (for guidance).
  objective: str = "image"  # "image": codes given the caption; "masked_text": see above.
  text_mask_rate: float = 0.3  # masked_text: share of caption tokens selected (at least one).
  text_corruption: str = "bert"  # masked_text: "bert" (80/10/10) or "mask" (all [MASK]).

  def __post_init__(self):
    if not 0.0 <= self.caption_dropout <= 1.0:
      raise errors.ConfigError(f"config.loss.caption_dropout={self.caption_dropout}: must be "
                               "in [0, 1]")
    if self.objective not in OBJECTIVES:
      raise errors.ConfigError(f"config.loss.objective={self.objective!r}: choose one of "
                               f"{', '.join(OBJECTIVES)}")
    if self.text_corruption not in ("bert", "mask"):
      raise errors.ConfigError(f"config.loss.text_corruption={self.text_corruption!r}: choose "
                               "bert or mask")
    if not 0.0 < self.text_mask_rate <= 1.0:
      raise errors.ConfigError(f"config.loss.text_mask_rate={self.text_mask_rate}: must be "
                               "in (0, 1]")


def loss_config(group: Any, model_cfg: BartConfig) -> BartLoss:
  settings = schema.parse(BartLoss, group, "config.loss")
  if settings.objective == "masked_text" and not 0 <= model_cfg.text_mask_id < \
      model_cfg.text_vocab_size:
    raise errors.DataError("config.loss.objective=masked_text needs a [MASK] token, and the "
                           "data's text tokenizer has none (metadata.json text_tokenizer)")
  return settings


def init_variables(model: Bart, rng: jax.Array, batch: Batch) -> dict[str, Any]:
  return model.init({"params": rng}, jnp.asarray(batch["text_tokens"], jnp.int32),
                    jnp.asarray(batch["text_mask"], bool),
                    jnp.asarray(batch["image_tokens"], jnp.int32), train=False)


def _code_ce(params, batch: Batch, text_valid_BxLt, dropout_rng, model: Bart, train: bool):
  codes_BxLi = jnp.asarray(batch["image_tokens"], jnp.int32)
  logits_BxLixV = model.apply({"params": params}, jnp.asarray(batch["text_tokens"], jnp.int32),
                              text_valid_BxLt, codes_BxLi, train=train,
                              rngs={"dropout": dropout_rng})
  return optax.softmax_cross_entropy_with_integer_labels(logits_BxLixV, codes_BxLi), \
      logits_BxLixV


def loss_fn(params, batch: Batch, rng: jax.Array, *, model: Bart, settings: BartLoss,
            train: bool, step=None):
  """Cross-entropy of every image code of the examples with an image -> (loss, metrics).
  In training each caption is replaced by the empty caption with probability
  settings.caption_dropout. (`step` is unused.) objective="masked_text": masked_text_loss."""
  del step
  if settings.objective == "masked_text":
    return masked_text_loss(params, batch, rng, model=model, settings=settings, train=train)
  drop_rng, dropout_rng = jax.random.split(rng)
  has_text_B = jnp.asarray(batch["has_text"], bool)
  dropped_B = jnp.zeros_like(has_text_B)
  if train and settings.caption_dropout > 0:
    dropped_B = jax.random.bernoulli(drop_rng, settings.caption_dropout, has_text_B.shape)
  text_valid_BxLt = (jnp.asarray(batch["text_mask"], bool)
                     & (has_text_B & ~dropped_B)[:, None])
  ce_BxLi, logits_BxLixV = _code_ce(params, batch, text_valid_BxLt, dropout_rng, model, train)
  scored_BxLi = jnp.broadcast_to(jnp.asarray(batch["has_image"], bool)[:, None], ce_BxLi.shape)
  count = jnp.maximum(jnp.sum(scored_BxLi), 1).astype(jnp.float32)
  loss = jnp.sum(jnp.where(scored_BxLi, ce_BxLi, 0.0)) / count
  correct = jnp.argmax(logits_BxLixV, -1) == jnp.asarray(batch["image_tokens"], jnp.int32)
  return loss, {"loss": loss, "loss_image": loss,
                "acc_image": jnp.sum(correct & scored_BxLi) / count,
                "captions_dropped": jnp.sum(dropped_B & has_text_B).astype(jnp.float32)}


def mask_caption_tokens(rng: jax.Array, text_valid_BxLt: jax.Array, rate: float) -> jax.Array:
  """Which caption tokens to mask: each valid one with probability `rate`, and always at
  least one per non-empty caption (its lowest draw)."""
  noise_BxLt = jnp.where(text_valid_BxLt, jax.random.uniform(rng, text_valid_BxLt.shape), 2.0)
  lowest_BxLt = noise_BxLt == jnp.min(noise_BxLt, axis=1, keepdims=True)
  return text_valid_BxLt & ((noise_BxLt < rate) | lowest_BxLt)


def corrupt_caption(rng: jax.Array, text_BxLt: jax.Array, valid_BxLt: jax.Array,
                    settings: BartLoss, cfg: BartConfig) -> tuple[jax.Array, jax.Array]:
  """(encoder input ids, selected) for masked_text: `mask_caption_tokens` selects; with
  text_corruption="bert" a selected token becomes [MASK] with probability 0.8, a random
  caption-vocabulary id with 0.1 and stays itself with 0.1 (so the output at every position
  must say which token is there); with "mask" every selected token becomes [MASK]."""
  select_rng, kind_rng, id_rng = jax.random.split(rng, 3)
  selected_BxLt = mask_caption_tokens(select_rng, valid_BxLt, settings.text_mask_rate)
  if settings.text_corruption == "mask":
    return jnp.where(selected_BxLt, cfg.text_mask_id, text_BxLt), selected_BxLt
  kind_BxLt = jax.random.uniform(kind_rng, text_BxLt.shape)
  random_BxLt = jax.random.randint(id_rng, text_BxLt.shape, 0, cfg.text_vocab_size)
  ids_BxLt = jnp.where(kind_BxLt < 0.8, cfg.text_mask_id,
                       jnp.where(kind_BxLt < 0.9, random_BxLt, text_BxLt))
  return jnp.where(selected_BxLt, ids_BxLt, text_BxLt), selected_BxLt


def masked_text_loss(params, batch: Batch, rng: jax.Array, *, model: Bart,
                     settings: BartLoss, train: bool):
  """The encoder's cross-entropy on the selected caption tokens of the examples with a
  caption (`corrupt_caption`)."""
  mask_rng, dropout_rng = jax.random.split(rng)
  cfg = model.config
  text_BxLt = jnp.asarray(batch["text_tokens"], jnp.int32)
  valid_BxLt = (jnp.asarray(batch["text_mask"], bool)
                & jnp.asarray(batch["has_text"], bool)[:, None])
  inputs_BxLt, masked_BxLt = corrupt_caption(mask_rng, text_BxLt, valid_BxLt, settings, cfg)
  logits_BxLtxV = model.apply({"params": params}, inputs_BxLt, valid_BxLt,
                              train=train, rngs={"dropout": dropout_rng},
                              method=Bart.masked_text_logits)
  ce_BxLt = optax.softmax_cross_entropy_with_integer_labels(logits_BxLtxV, text_BxLt)
  count = jnp.maximum(jnp.sum(masked_BxLt), 1).astype(jnp.float32)
  loss = jnp.sum(jnp.where(masked_BxLt, ce_BxLt, 0.0)) / count
  correct = (jnp.argmax(logits_BxLtxV, -1) == text_BxLt) & masked_BxLt
  return loss, {"loss": loss, "loss_text": loss, "acc_text": jnp.sum(correct) / count,
                "num_masked_text": count}


def image_nll(params, batch: Batch, *, model: Bart) -> jax.Array:
  """`upgen eval nll`: -log p(image | caption) per example (teacher forcing)."""
  text_valid_BxLt = (jnp.asarray(batch["text_mask"], bool)
                     & jnp.asarray(batch["has_text"], bool)[:, None])
  ce_BxLi, _ = _code_ce(params, batch, text_valid_BxLt, jax.random.key(0), model, False)
  return jnp.sum(ce_BxLi, axis=1)


def sample_config(group: Any) -> SampleSettings:
  return schema.parse(SampleSettings, group, "config.sample")


def train_flops(c: BartConfig) -> flops.FlopCount:
  """Encoder over Lenc = Lt + 2 caption tokens (bidirectional), decoder over Li codes
  (causal) with cross-attention to the Lenc encoder outputs, the image head on Li
  positions (upgen/flops.py)."""
  return flops.EncoderDecoder(
      encoder=flops.Transformer(c.encoder_layers, c.emb_dim, c.mlp_dim, c.encoder_len,
                                causal=False),
      decoder=flops.Transformer(c.num_layers, c.emb_dim, c.mlp_dim, c.image_seq_len,
                                causal=True, heads=((c.image_seq_len, c.image_vocab_size),)),
  ).train_flops()


def sample_cost(c: BartConfig, s: SampleSettings, batch_size: int, param_bytes: int
                ) -> families.SampleCost:
  """The encoder once per row, then Li cached decoder steps that each read the parameters
  and the self and cross K,V caches; FLOPs: one encoder-decoder forward per row."""
  rows = batch_size * (2 if s.guidance_scale > 0 else 1) * max(s.beam_size, 1)
  forward = train_flops(c).total / 3
  itemsize = jnp.dtype(c.dtype).itemsize
  mean_context = (c.image_seq_len + 1) / 2 + c.encoder_len
  cache_bytes = 2 * c.num_layers * c.emb_dim * itemsize * rows * mean_context
  return families.SampleCost(
      flops=rows * forward, bytes=c.image_seq_len * (param_bytes + cache_bytes),
      note=(f"{rows} rows x {forward / 1e9:.3f} GFLOP encoder-decoder forward; "
            f"{c.image_seq_len} steps x ({param_bytes / 1e6:.1f} MB parameters + self and "
            f"cross K,V of {rows} rows x {mean_context:.0f} positions on average)"))


# ----------------------------------------------- parameter groups (freeze, init_groups)

PARAM_GROUPS = {
    "encoder": ("text_embed", "text_pos", "encoder_embed_norm", "encoder", "encoder_norm"),
    "decoder": ("image_embed", "image_pos", "decoder_embed_norm", "decoder", "decoder_norm",
                "image_head"),
}


FAMILY = Family(
    name="bart", reads=readers.TOKEN_RECORDS, model_config=model_config,
    loss_config=loss_config, make_model=Bart, init_variables=init_variables, loss_fn=loss_fn,
    sample_config=sample_config, sample_images=ar_sampler.sample_images,
    inpaint=ar_sampler.inpaint, unconditional_images=ar_sampler.unconditional_images,
    image_nll=image_nll, image_features=image_features, train_flops=train_flops,
    sample_cost=sample_cost, param_groups=PARAM_GROUPS, import_hf=bart_hf.import_hf)
