"""DALL-E: a decoder-only transformer over one stream [caption; begin-of-image; image tokens].

Stream (length L = Lt + 1 + Li), and the model's input, the stream shifted right by a
learned start token (as in flax lm1b), so that output i predicts stream token i:

  stream:  t_0 .. t_{Lt-1}  BOI      i_0  i_1 .. i_{Li-1}
  input:   START t_0 .. t_{Lt-1}   BOI  i_0 .. i_{Li-2}

Inputs share one embedding table over a joint vocabulary (`DalleConfig` ids): text ids,
Lt per-position text pads, START, image ids, BOI. Text padding is DALL-E's: the pad at text
position p is its own learned token (pad_p), so every stream has the same layout and no
attention mask (docs/dalle.md says why). Positions: a learned table for the text positions
and the BOI slot, learned row + column embeddings for the image grid; input i carries the
position of the token it predicts. Pre-LN causal blocks (upgen/models/layers.py), a final
LayerNorm, a text head on the text outputs and an image head on the image outputs.

Loss: cross-entropy on real caption tokens and on image tokens, each averaged over its own
count in the batch, mixed by config.loss.text_loss_weight / image_loss_weight. Caption
dropout (config.loss.caption_dropout) turns a caption into all pads, the stream of an
image-only example and of the unconditional side of guidance. Text-only examples score
their caption only. Sampling: KV-cache decoding in upgen/sampling/ar_sampler.py.
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
from upgen.models import dalle_gpt2
from upgen.models import gpt2_hf
from upgen.models import layers
from upgen.sampling import ar_sampler
from upgen.sampling.settings import SampleSettings

ARCHITECTURES = {"dalle": {}, "gpt2": dalle_gpt2.FIXED}


@dataclasses.dataclass(frozen=True, kw_only=True)
class DalleConfig(layers.TransformerConfig):
  """The architecture: config.model plus the sizes the data fixes, and the joint input
  vocabulary they imply."""
  causal: bool = True
  # "dalle": the layout above. "gpt2": GPT-2's network over the paper's documents, what a
  # pretrained GPT-2 needs (upgen/models/dalle_gpt2.py).
  architecture: str = "dalle"
  max_positions: int = 0  # "gpt2": position table rows (GPT-2: 1024; 0 or fewer: as needed).
  # "gpt2": the logits against the token table (GPT-2's tied head), or, False, against an
  # output table of their own (a GPT-2 with tie_word_embeddings=false).
  tie_embeddings: bool = True
  # "gpt2": an imported LM's vocabulary (config.json vocab_size) where it has more rows than
  # the tokenizer has ids: the text ids span them all, as in transformers' softmax (0: the
  # tokenizer's ids).
  lm_vocab_size: int = 0
  image_vocab_size: int
  text_vocab_size: int
  image_seq_len: int
  text_seq_len: int
  image_grid_width: int
  text_pad_id: int

  def __post_init__(self):
    super().__post_init__()
    if not self.causal:
      raise ValueError("the decoder-only family is causal (causal=False was given)")
    if self.architecture not in ARCHITECTURES:
      raise errors.ConfigError(f"config.model.architecture={self.architecture!r}: choose one "
                               f"of {sorted(ARCHITECTURES)}")
    if self.architecture != "gpt2" and (not self.tie_embeddings or self.lm_vocab_size):
      raise errors.ConfigError("config.model.tie_embeddings and lm_vocab_size are the \"gpt2\" "
                               f"architecture's; this is {self.architecture!r}")
    if self.architecture == "gpt2" and self.image_seq_len == 0 == self.image_vocab_size:
      return  # Text-only records: a plain language model.
    if not 0 <= self.text_pad_id < self.text_vocab_size:
      raise ValueError(f"the data's text_pad_id={self.text_pad_id} is outside its text "
                       f"vocabulary [0, {self.text_vocab_size})")
    for key in ("text_seq_len", "image_seq_len"):
      if getattr(self, key) < 1:
        raise errors.ConfigError(f"{key}={getattr(self, key)}: must be >= 1")
    if self.image_grid_width < 1 or self.image_seq_len % self.image_grid_width:
      raise ValueError(f"image_seq_len={self.image_seq_len} is not a grid of "
                       f"image_grid_width={self.image_grid_width} columns")

  # Joint input vocabulary: [text | pad_0 .. pad_{Lt-1} | START | image | BOI].
  @property
  def start_id(self) -> int:
    return self.text_vocab_size + self.text_seq_len

  @property
  def image_offset(self) -> int:
    return self.start_id + 1

  @property
  def boi_id(self) -> int:
    return self.image_offset + self.image_vocab_size

  @property
  def input_vocab_size(self) -> int:
    return self.boi_id + 1

  @property
  def stream_len(self) -> int:
    return self.text_seq_len + 1 + self.image_seq_len

  @property
  def prompt_len(self) -> int:
    """Inputs before the first image token is predicted: START, the caption, BOI."""
    return self.text_seq_len + 2


def model_config(group: Any, spec: DataSpec) -> DalleConfig:
  architecture = (group.get("architecture") if hasattr(group, "get") else None) or "dalle"
  if architecture == "gpt2" and not spec.image_vocab_size:  # Text-only records.
    if not spec.text_vocab_size:
      raise errors.DataError("the data has no text tokenizer (metadata.json text_tokenizer is "
                             "null): a language model needs text tokens")
    sizes = dict(image_vocab_size=0, image_seq_len=0, image_grid_width=0,
                 text_vocab_size=spec.text_vocab_size, text_seq_len=spec.text_seq_len,
                 text_pad_id=max(spec.text_pad_id, 0))
  else:
    sizes = spec.token_sizes()
    del sizes["text_mask_id"]  # Text pads are learned (or left out); no [MASK] is needed.
  if architecture == "gpt2":  # An imported LM's rows past the tokenizer's ids stay text ids.
    lm_vocab = group.get("lm_vocab_size") if hasattr(group, "get") else None
    if isinstance(lm_vocab, int) and not isinstance(lm_vocab, bool):  # (Else parse says.)
      sizes["text_vocab_size"] = max(sizes["text_vocab_size"], lm_vocab)
  return schema.parse(DalleConfig, group, "config.model",
                      given={**sizes, **ARCHITECTURES.get(architecture, {})},
                      skip=families.MODEL_SELECTORS)


def text_inputs(text_BxLt: jax.Array, text_valid_BxLt: jax.Array, cfg: DalleConfig) -> jax.Array:
  """Caption ids with each invalid position p replaced by its own pad token pad_p."""
  pads_Lt = cfg.text_vocab_size + jnp.arange(text_BxLt.shape[1], dtype=jnp.int32)
  return jnp.where(text_valid_BxLt, text_BxLt.astype(jnp.int32), pads_Lt[None])


def prompt_inputs(text_BxLt: jax.Array, text_valid_BxLt: jax.Array, cfg: DalleConfig
                  ) -> jax.Array:
  """[START, caption with pads, BOI]: the first Lt + 2 inputs, B x (Lt + 2)."""
  b = text_BxLt.shape[0]
  return jnp.concatenate([jnp.full((b, 1), cfg.start_id, jnp.int32),
                          text_inputs(text_BxLt, text_valid_BxLt, cfg),
                          jnp.full((b, 1), cfg.boi_id, jnp.int32)], axis=1)


def stream_inputs(text_BxLt: jax.Array, text_valid_BxLt: jax.Array, image_BxLi: jax.Array,
                  cfg: DalleConfig) -> jax.Array:
  """The whole input, B x L: the prompt, then every image token but the last."""
  image_BxLi = image_BxLi.astype(jnp.int32) + cfg.image_offset
  return jnp.concatenate([prompt_inputs(text_BxLt, text_valid_BxLt, cfg), image_BxLi[:, :-1]],
                         axis=1)


class Dalle(nn.Module):
  """Training: (text ids, text valid, image ids) -> (text logits BxLtxVt, image logits BxLixVi).
  Decoding (config.decode, KV cache): `prefill`, then `feed_image_token` per token."""
  config: DalleConfig

  def setup(self):
    cfg = self.config
    pos_init = lambda names: nn.with_logical_partitioning(layers.embed_init, names)
    height = cfg.image_seq_len // cfg.image_grid_width
    self.embed = layers.Embed(layers.pad_vocab(cfg.input_vocab_size), cfg.emb_dim,
                              dtype=cfg.dtype, param_dtype=cfg.param_dtype)
    # Text positions and the BOI slot; image rows; image columns.
    self.text_pos = self.param("text_pos", pos_init((None, "embed")),
                               (cfg.text_seq_len + 1, cfg.emb_dim), cfg.param_dtype)
    self.image_row = self.param("image_row", pos_init((None, "embed")), (height, cfg.emb_dim),
                                cfg.param_dtype)
    self.image_col = self.param("image_col", pos_init((None, "embed")),
                                (cfg.image_grid_width, cfg.emb_dim), cfg.param_dtype)
    self.dropout = nn.Dropout(cfg.dropout_rate)
    self.decoder = layers.TransformerStack(cfg.stack())
    self.final_norm = layers.LayerNorm(cfg.dtype, cfg.param_dtype)
    self.text_head = layers.Unembed(cfg.text_vocab_size, cfg.dtype, cfg.param_dtype)
    self.image_head = layers.Unembed(cfg.image_vocab_size, cfg.dtype, cfg.param_dtype)

  def positions(self) -> jax.Array:
    """L x E: text table for stream slots [0, Lt], row + column for the image cells."""
    grid_HxWxE = self.image_row[:, None, :] + self.image_col[None, :, :]
    return jnp.concatenate([self.text_pos, grid_HxWxE.reshape(-1, self.config.emb_dim)])

  def hidden(self, ids_BxT: jax.Array, start=0, *, train: bool = False) -> jax.Array:
    """Final hidden states of inputs at stream slots [start, start + T) (start may be traced)."""
    cfg = self.config
    pos_TxE = jax.lax.dynamic_slice_in_dim(self.positions(), start, ids_BxT.shape[1])
    x_BxTxE = (self.embed(ids_BxT) + jnp.asarray(pos_TxE, cfg.dtype)[None]).astype(cfg.dtype)
    x_BxTxE = self.dropout(x_BxTxE, deterministic=not train)
    x_BxTxE = nn.with_logical_constraint(x_BxTxE, ("batch", "length", "embed"))
    return self.final_norm(self.decoder(x_BxTxE, deterministic=not train))

  def __call__(self, text_tokens_BxLt: jax.Array, text_valid_BxLt: jax.Array,
               image_tokens_BxLi: jax.Array, *, train: bool = False
               ) -> tuple[jax.Array, jax.Array]:
    cfg = self.config
    lt, li = text_tokens_BxLt.shape[1], image_tokens_BxLi.shape[1]
    if (li, lt) != (cfg.image_seq_len, cfg.text_seq_len):
      raise ValueError(f"Dalle got image/text lengths {(li, lt)}, the model's image_seq_len/"
                       f"text_seq_len (data_spec.json) say {(cfg.image_seq_len, cfg.text_seq_len)}")
    ids_BxL = stream_inputs(text_tokens_BxLt, text_valid_BxLt, image_tokens_BxLi, cfg)
    h_BxLxE = self.hidden(ids_BxL, train=train)
    return self.text_head(h_BxLxE[:, :lt]), self.image_head(h_BxLxE[:, lt + 1:])

  def next_image_logits(self, ids_BxT: jax.Array, start) -> jax.Array:
    """Image logits BxVi predicted by the last of these inputs (prefill or one decode step)."""
    return self.image_head(self.hidden(ids_BxT, start)[:, -1:])[:, 0]

  def allocate_cache(self, text_tokens_BxLt: jax.Array, text_valid_BxLt: jax.Array
                     ) -> jax.Array:
    """Decoding: a forward over a whole stream, which sizes the KV cache (under eval_shape)."""
    del text_valid_BxLt
    ids_BxL = jnp.zeros((text_tokens_BxLt.shape[0], self.config.stream_len), jnp.int32)
    return self.next_image_logits(ids_BxL, 0)

  def prefill(self, text_tokens_BxLt: jax.Array, text_valid_BxLt: jax.Array) -> jax.Array:
    """Decoding: [START, caption, BOI] into the KV cache -> logits of image token 0, BxVi."""
    return self.next_image_logits(
        prompt_inputs(text_tokens_BxLt, text_valid_BxLt.astype(bool), self.config), 0)

  def feed_image_token(self, tokens_B: jax.Array, i) -> jax.Array:
    """Decoding: image token i of every stream into the cache -> logits of token i + 1."""
    cfg = self.config
    ids_Bx1 = (tokens_B.astype(jnp.int32) + cfg.image_offset)[:, None]
    return self.next_image_logits(ids_Bx1, cfg.prompt_len + i)


@dataclasses.dataclass(frozen=True)
class DalleLoss:
  """config.loss: modality weights and caption dropout."""
  text_loss_weight: float = 0.125
  image_loss_weight: float = 0.875
  caption_dropout: float = 0.1

  def __post_init__(self):
    for key in ("text_loss_weight", "image_loss_weight"):
      if getattr(self, key) < 0:
        raise errors.ConfigError(f"config.loss.{key}={getattr(self, key)}: must be >= 0")
    if self.text_loss_weight + self.image_loss_weight <= 0:
      raise errors.ConfigError("config.loss.text_loss_weight and image_loss_weight are both 0")
    if not 0.0 <= self.caption_dropout <= 1.0:
      raise errors.ConfigError(
          f"config.loss.caption_dropout={self.caption_dropout}: must be in [0, 1]")


def loss_config(group: Any, model_cfg: DalleConfig) -> DalleLoss:
  del model_cfg
  return schema.parse(DalleLoss, group, "config.loss")


def loss_fn(params, batch: Batch, rng: jax.Array, *, model: Dalle, settings: DalleLoss,
            train: bool, step=None):
  """Next-token cross-entropy -> (total loss, metrics). (`step` is unused.)

  In training each caption is dropped with probability settings.caption_dropout.
  """
  del step
  drop_rng, dropout_rng = jax.random.split(rng)
  shape_B = np.shape(batch["has_text"])
  if train and settings.caption_dropout > 0:
    dropped_B = jax.random.bernoulli(drop_rng, settings.caption_dropout, shape_B)
  else:
    dropped_B = jnp.zeros(shape_B, bool)
  loss = dalle_gpt2.stream_loss if _gpt2(model.config) else stream_loss
  return loss(params, batch, dropped_B, dropout_rng, model=model, settings=settings,
              train=train)


def _gpt2(c: DalleConfig) -> bool:
  return c.architecture == "gpt2"


def image_features(params, image_tokens_BxLi, *, model: Dalle) -> list[jax.Array]:
  """`upgen eval probe`: per transformer block, the mean of its output over the positions
  that read image codes (the last code is never an input of a decoder-only model), with the
  caption replaced by its learned pads (the unconditional stream), B x E each."""
  cfg = model.config
  if _gpt2(cfg) or cfg.scan_layers:
    raise errors.ConfigError("upgen eval probe reads each block of the dalle architecture: "
                             "not the gpt2 one, nor scan_layers=true")
  image_BxLi = jnp.asarray(image_tokens_BxLi, jnp.int32)
  b = image_BxLi.shape[0]
  text_BxLt = jnp.zeros((b, cfg.text_seq_len), jnp.int32)
  blocks = layers.module_outputs(model, params, text_BxLt, jnp.zeros_like(text_BxLt, bool),
                                 image_BxLi, of=layers.TransformerBlock)
  first = cfg.text_seq_len + 2  # After START, the caption's pads and BOI.
  return [jnp.mean(blocks[f"decoder/layers_{i}"][:, first:].astype(jnp.float32), axis=1)
          for i in range(cfg.num_layers)]


def make_model(c: DalleConfig) -> nn.Module:
  return dalle_gpt2.Gpt2(c) if _gpt2(c) else Dalle(c)


def stream_loss(params, batch: Batch, dropped_B: jax.Array, dropout_rng: jax.Array, *,
                model: Dalle, settings: DalleLoss, train: bool):
  """Cross-entropy with the captions of `dropped_B` replaced by pads.

  Scored: real caption tokens (text_mask, has_text, not dropped) and every image token of an
  example with an image. loss_text and loss_image are each a mean over their own tokens in
  the batch, so the weights set the modalities' shares whatever the caption lengths.
  """
  text_BxLt = jnp.asarray(batch["text_tokens"], jnp.int32)
  image_BxLi = jnp.asarray(batch["image_tokens"], jnp.int32)
  text_valid_BxLt = (jnp.asarray(batch["text_mask"], bool)
                     & jnp.asarray(batch["has_text"], bool)[:, None] & ~dropped_B[:, None])
  image_valid_BxLi = jnp.broadcast_to(jnp.asarray(batch["has_image"], bool)[:, None],
                                      image_BxLi.shape)
  text_logits, image_logits = model.apply(
      {"params": params}, text_BxLt, text_valid_BxLt, image_BxLi, train=train,
      rngs={"dropout": dropout_rng})
  n_text = jnp.sum(text_valid_BxLt).astype(jnp.float32)
  n_image = jnp.sum(image_valid_BxLi).astype(jnp.float32)
  mean_text = lambda x_BxLt: jnp.sum(jnp.where(text_valid_BxLt, x_BxLt, 0.0)) / jnp.maximum(
      n_text, 1.0)
  mean_image = lambda x_BxLi: jnp.sum(jnp.where(image_valid_BxLi, x_BxLi, 0.0)) / jnp.maximum(
      n_image, 1.0)
  loss_text = mean_text(optax.softmax_cross_entropy_with_integer_labels(text_logits, text_BxLt))
  loss_image = mean_image(optax.softmax_cross_entropy_with_integer_labels(image_logits,
                                                                          image_BxLi))
  total = settings.text_loss_weight * loss_text + settings.image_loss_weight * loss_image
  metrics = dict(
      loss=total, loss_text=loss_text, loss_image=loss_image,
      acc_text=mean_text((jnp.argmax(text_logits, -1) == text_BxLt).astype(jnp.float32)),
      acc_image=mean_image((jnp.argmax(image_logits, -1) == image_BxLi).astype(jnp.float32)),
      num_text_tokens=n_text, num_image_tokens=n_image,
      captions_dropped=jnp.sum(dropped_B & jnp.asarray(batch["has_text"], bool)
                               ).astype(jnp.float32))
  return total, metrics


def init_variables(model: Dalle, rng: jax.Array, batch: Batch) -> dict[str, Any]:
  if _gpt2(model.config):
    return dalle_gpt2.init_variables(model, rng, batch)
  return model.init({"params": rng}, jnp.asarray(batch["text_tokens"], jnp.int32),
                    jnp.asarray(batch["text_mask"], bool),
                    jnp.asarray(batch["image_tokens"], jnp.int32), train=False)


def train_flops(c: DalleConfig) -> flops.FlopCount:
  """Forward + backward FLOPs of one stream of L = Lt + 1 + Li inputs: 6N x L, causal
  attention 6 x layers x L^2 x E (the half a causal kernel computes), text logits on the
  text targets and image logits on the image targets (see upgen/flops.py)."""
  if _gpt2(c):
    return dalle_gpt2.train_flops(c)
  return flops.Transformer(
      c.num_layers, c.emb_dim, c.mlp_dim, c.stream_len, causal=True,
      heads=((c.text_seq_len, c.text_vocab_size), (c.image_seq_len, c.image_vocab_size))
  ).train_flops()


def image_nll(params, batch: Batch, *, model: Dalle) -> jax.Array:
  """`upgen eval nll`: -log p(image | caption) per example, the sum of the image tokens'
  next-token cross-entropies (teacher forcing, no caption dropout)."""
  if _gpt2(model.config):
    return dalle_gpt2.image_nll(params, batch, model=model)
  image_BxLi = jnp.asarray(batch["image_tokens"], jnp.int32)
  text_valid_BxLt = (jnp.asarray(batch["text_mask"], bool)
                     & jnp.asarray(batch["has_text"], bool)[:, None])
  _, image_logits = model.apply({"params": params}, jnp.asarray(batch["text_tokens"], jnp.int32),
                                text_valid_BxLt, image_BxLi, train=False)
  ce_BxLi = optax.softmax_cross_entropy_with_integer_labels(
      image_logits.astype(jnp.float32), image_BxLi)
  return jnp.sum(ce_BxLi, axis=1)


def sample_cost(c: DalleConfig, s: SampleSettings, batch_size: int, param_bytes: int
                ) -> families.SampleCost:
  """KV-cache decoding: the prompt is prefilled, then each of the Li image tokens is one
  step over all rows (x2 with guidance) that reads the parameters and the cache so far.
  FLOPs: one causal forward over the stream per row."""
  rows = batch_size * (2 if s.guidance_scale > 0 else 1) * max(s.beam_size, 1)
  forward = train_flops(c).total / 3
  itemsize = jnp.dtype(c.dtype).itemsize
  prompt = dalle_gpt2.layout(c).prompt_len - 1 if _gpt2(c) else c.text_seq_len + 1
  mean_context = prompt + (c.image_seq_len - 1) / 2
  cache_bytes = 2 * c.num_layers * c.emb_dim * itemsize * rows * mean_context
  return families.SampleCost(
      flops=rows * forward,
      bytes=c.image_seq_len * (param_bytes + cache_bytes),
      note=(f"{rows} rows x {forward / 1e9:.3f} GFLOP causal forward; {c.image_seq_len} "
            f"steps x ({param_bytes / 1e6:.1f} MB parameters + K,V cache of {rows} rows x "
            f"{mean_context:.0f} positions on average)"))


def _needs_gpt2(c: DalleConfig) -> None:
  if not _gpt2(c):
    raise errors.ConfigError("config.model.architecture=dalle models captions in per-position "
                             "slots, not plain text; a text perplexity needs architecture gpt2")


def export_hf(params, c: DalleConfig):
  """`upgen export hf`: a "gpt2" model as a GPT2LMHeadModel (upgen/models/gpt2_hf.py) whose
  vocabulary is the table's real rows (text only, for a language model on text records)."""
  if not _gpt2(c):
    raise errors.ConfigError("config.model.architecture=dalle has no Hugging Face "
                             "counterpart; `upgen export hf` writes architecture gpt2")
  lay = dalle_gpt2.layout(c)
  rows = lay.text_vocab_size if lay.text_only else lay.vocab_size
  hf_config, weights = gpt2_hf.export_hf(params, c, rows)
  if not lay.text_only:
    hf_config["upgen"] = {"document_tokens": {t: lay.doc_id(i) for i, t in
                                              enumerate(dalle_gpt2.DOC_TOKENS)},
                          "pad_id": lay.pad_id, "image_offset": lay.image_offset,
                          "image_vocab_size": lay.image_vocab_size}
  return hf_config, weights


def text_context(c: DalleConfig) -> int:
  _needs_gpt2(c)
  return dalle_gpt2.context(c)


def text_nll(params, ids_BxT, pads_B, *, model: nn.Module):
  _needs_gpt2(model.config)
  return dalle_gpt2.text_nll(params, ids_BxT, pads_B, model=model)


def sample_config(group: Any) -> SampleSettings:
  return schema.parse(SampleSettings, group, "config.sample")


FAMILY = Family(
    name="dalle", reads=readers.TOKEN_RECORDS, model_config=model_config,
    loss_config=loss_config, make_model=make_model, init_variables=init_variables,
    loss_fn=loss_fn, sample_config=sample_config,
    sample_images=ar_sampler.sample_images, inpaint=ar_sampler.inpaint,
    unconditional_images=ar_sampler.unconditional_images, image_nll=image_nll,
    image_features=image_features, train_flops=train_flops, sample_cost=sample_cost,
    text_nll=text_nll, text_context=text_context, export_hf=export_hf,
    param_groups=lambda c: dalle_gpt2.param_groups(c) if _gpt2(c) else {},
    import_hf=gpt2_hf.import_hf)
