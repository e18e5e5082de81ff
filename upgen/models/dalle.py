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
count in the batch, mixed by config.model.text_loss_weight / image_loss_weight. Caption
dropout (config.model.caption_dropout) turns a caption into all pads, the stream of an
image-only example and of the unconditional side of guidance. Text-only examples score
their caption only. Sampling: KV-cache decoding (upgen/sampling/autoregressive.py,
beam_search.py) wired up at the end of this file.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import linen as nn

from upgen import families
from upgen import flops
from upgen.families import Batch, Family
from upgen.models import layers
from upgen.sampling import autoregressive
from upgen.sampling import beam_search

RESOLVED_KEYS = ("image_vocab_size", "text_vocab_size", "image_seq_len", "image_grid_width",
                 "text_seq_len", "text_pad_id", "text_mask_id")


@dataclasses.dataclass(frozen=True)
class DalleConfig:
  """Model hyper-parameters and the joint input vocabulary, built from config.model."""
  num_layers: int
  emb_dim: int
  num_heads: int
  mlp_dim: int
  image_vocab_size: int
  text_vocab_size: int
  image_seq_len: int
  text_seq_len: int
  image_grid_width: int
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  attention_impl: Optional[str] = None
  scan_layers: bool = False
  remat: str = "none"
  decode: bool = False  # KV-cache decoding (see `decoder`).

  @classmethod
  def from_config(cls, m: ml_collections.ConfigDict) -> "DalleConfig":
    for key in RESOLVED_KEYS:
      if m[key] < 0:
        raise ValueError(f"config.model.{key}={m[key]} is unresolved: set it or let the "
                         "trainer read it from the data's metadata.json")
    if m.text_pad_id >= m.text_vocab_size:
      raise ValueError(f"config.model.text_pad_id={m.text_pad_id} is outside the text "
                       f"vocabulary (config.model.text_vocab_size={m.text_vocab_size})")
    for key in ("text_seq_len", "image_seq_len"):
      if m[key] < 1:
        raise ValueError(f"config.model.{key}={m[key]}: must be >= 1")
    if m.image_grid_width < 1 or m.image_seq_len % m.image_grid_width:
      raise ValueError(f"config.model.image_seq_len={m.image_seq_len} is not a grid of "
                       f"config.model.image_grid_width={m.image_grid_width} columns")
    return cls(
        num_layers=m.num_layers, emb_dim=m.emb_dim, num_heads=m.num_heads, mlp_dim=m.mlp_dim,
        image_vocab_size=m.image_vocab_size, text_vocab_size=m.text_vocab_size,
        image_seq_len=m.image_seq_len, text_seq_len=m.text_seq_len,
        image_grid_width=m.image_grid_width, dropout_rate=m.dropout_rate,
        attention_dropout_rate=m.attention_dropout_rate,
        dtype=layers.dtype_from_name(m.dtype, "config.model.dtype"),
        param_dtype=layers.dtype_from_name(m.param_dtype, "config.model.param_dtype"),
        attention_impl=m.get("attention_impl", None) or None,
        scan_layers=bool(m.get("scan_layers", False)), remat=m.get("remat", "none"))

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

  def transformer(self) -> layers.TransformerConfig:
    return layers.TransformerConfig(
        num_layers=self.num_layers, emb_dim=self.emb_dim, num_heads=self.num_heads,
        mlp_dim=self.mlp_dim, dropout_rate=self.dropout_rate,
        attention_dropout_rate=self.attention_dropout_rate, dtype=self.dtype,
        param_dtype=self.param_dtype, causal=True, decode=self.decode,
        attention_impl=self.attention_impl, scan_layers=self.scan_layers, remat=self.remat)


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
  Decoding: `next_image_logits` on a chunk of inputs with the KV cache."""
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
    self.decoder = layers.TransformerStack(cfg.transformer())
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
      raise ValueError(f"Dalle got image/text lengths {(li, lt)}, config.model.image_seq_len/"
                       f"text_seq_len say {(cfg.image_seq_len, cfg.text_seq_len)}")
    ids_BxL = stream_inputs(text_tokens_BxLt, text_valid_BxLt, image_tokens_BxLi, cfg)
    h_BxLxE = self.hidden(ids_BxL, train=train)
    return self.text_head(h_BxLxE[:, :lt]), self.image_head(h_BxLxE[:, lt + 1:])

  def next_image_logits(self, ids_BxT: jax.Array, start) -> jax.Array:
    """Image logits BxVi predicted by the last of these inputs (prefill or one decode step)."""
    return self.image_head(self.hidden(ids_BxT, start)[:, -1:])[:, 0]


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """Loss weights and caption dropout, from config.model."""
  text_loss_weight: float = 0.125
  image_loss_weight: float = 0.875
  caption_dropout: float = 0.1

  @classmethod
  def from_config(cls, m: ml_collections.ConfigDict) -> "LossConfig":
    out = cls(**{f.name: float(m[f.name]) for f in dataclasses.fields(cls)})
    for key in ("text_loss_weight", "image_loss_weight"):
      if getattr(out, key) < 0:
        raise ValueError(f"config.model.{key}={getattr(out, key)}: must be >= 0")
    if out.text_loss_weight + out.image_loss_weight <= 0:
      raise ValueError("config.model.text_loss_weight and image_loss_weight are both 0")
    if not 0.0 <= out.caption_dropout <= 1.0:
      raise ValueError(f"config.model.caption_dropout={out.caption_dropout}: must be in [0, 1]")
    return out


def loss_fn(params, batch: Batch, rng: jax.Array, *, model: Dalle,
            config: ml_collections.ConfigDict, train: bool, step=None):
  """Next-token cross-entropy -> (total loss, metrics). (`step` is unused.)

  In training each caption is dropped with probability config.model.caption_dropout.
  """
  del step
  settings = LossConfig.from_config(config.model)
  drop_rng, dropout_rng = jax.random.split(rng)
  shape_B = np.shape(batch["has_text"])
  if train and settings.caption_dropout > 0:
    dropped_B = jax.random.bernoulli(drop_rng, settings.caption_dropout, shape_B)
  else:
    dropped_B = jnp.zeros(shape_B, bool)
  return stream_loss(params, batch, dropped_B, dropout_rng, model=model, settings=settings,
                     train=train)


def stream_loss(params, batch: Batch, dropped_B: jax.Array, dropout_rng: jax.Array, *,
                model: Dalle, settings: LossConfig, train: bool):
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


def make_model(config: ml_collections.ConfigDict) -> Dalle:
  # Fail at start-up, not inside the first traced step.
  LossConfig.from_config(config.model)
  cfg = DalleConfig.from_config(config.model)
  cfg.transformer()
  return Dalle(cfg)


def dummy_batch(config: ml_collections.ConfigDict, batch_size: int) -> dict[str, np.ndarray]:
  """A paired batch of the right shapes/dtypes (full-length captions; values arbitrary)."""
  c = DalleConfig.from_config(config.model)
  return families.paired_token_batch(batch_size, c.image_seq_len, c.text_seq_len,
                                     c.text_vocab_size)


def init_variables(model: Dalle, rng: jax.Array, batch: Batch) -> dict[str, Any]:
  return model.init({"params": rng}, jnp.asarray(batch["text_tokens"], jnp.int32),
                    jnp.asarray(batch["text_mask"], bool),
                    jnp.asarray(batch["image_tokens"], jnp.int32), train=False)


def train_flops_per_example(config: ml_collections.ConfigDict) -> flops.FlopCount:
  """Forward + backward FLOPs of one stream of L = Lt + 1 + Li inputs: 6N x L, causal
  attention 6 x layers x L^2 x E (the half a causal kernel computes), text logits on the
  text targets and image logits on the image targets (see upgen/flops.py)."""
  c = DalleConfig.from_config(config.model)
  return flops.Transformer(
      c.num_layers, c.emb_dim, c.mlp_dim, c.stream_len, causal=True,
      heads=((c.text_seq_len, c.text_vocab_size), (c.image_seq_len, c.image_vocab_size))
  ).train_flops()


# ---------------------------------------------------------------------------- sampling


@dataclasses.dataclass(frozen=True)
class SampleSettings:
  """config.sample as a hashable record (static under jit)."""
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  guidance_scale: float = 0.0
  beam_size: int = 0

  @classmethod
  def from_config(cls, cfg: Any) -> "SampleSettings":
    if isinstance(cfg, SampleSettings):
      return cfg
    out = cls(**{f.name: type(f.default)(cfg.get(f.name, f.default))
                 for f in dataclasses.fields(cls)})
    autoregressive.check_settings(out.temperature, out.top_k, out.top_p, out.guidance_scale)
    if out.beam_size < 0:
      raise ValueError(f"config.sample.beam_size={out.beam_size}: must be >= 0 (0 = sample)")
    return out


def decoder(model: Dalle) -> Dalle:
  """The same model in KV-cache mode (same params)."""
  return Dalle(dataclasses.replace(model.config, decode=True, remat="none"))


def cache_batch_axis(model: Dalle) -> int:
  """Row axis of the cache leaves: nn.scan puts a layer axis in front."""
  return 1 if model.config.scan_layers else 0


def init_cache(model: Dalle, batch_size: int) -> Any:
  """An empty KV cache for `batch_size` streams of the full length."""
  dec = decoder(model)
  ids_BxL = jnp.zeros((batch_size, model.config.stream_len), jnp.int32)
  shapes = jax.eval_shape(lambda: dec.init(jax.random.key(0), ids_BxL, 0,
                                           method=Dalle.next_image_logits))["cache"]
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def prefill(params, model: Dalle, text_BxLt, text_valid_BxLt, cache) -> tuple[jax.Array, Any]:
  """Runs the prompts through the cache: (logits of image token 0, BxVi; cache)."""
  ids_BxP = prompt_inputs(text_BxLt, text_valid_BxLt.astype(bool), model.config)
  logits_BxV, state = decoder(model).apply({"params": params, "cache": cache}, ids_BxP, 0,
                                           method=Dalle.next_image_logits, mutable=["cache"])
  return logits_BxV, state["cache"]


def step(params, model: Dalle, tokens_B, cache, i) -> tuple[jax.Array, Any]:
  """Feeds image token i of every stream: (logits of image token i + 1, cache)."""
  cfg = model.config
  ids_Bx1 = (tokens_B.astype(jnp.int32) + cfg.image_offset)[:, None]
  logits_BxV, state = decoder(model).apply(
      {"params": params, "cache": cache}, ids_Bx1, cfg.prompt_len + i,
      method=Dalle.next_image_logits, mutable=["cache"])
  return logits_BxV, state["cache"]


@functools.partial(jax.jit, static_argnames=("model", "settings", "num_samples"))
def _generate(params, text_BxLt, text_valid_BxLt, rng, *, model: Dalle,
              settings: SampleSettings, num_samples: int) -> jax.Array:
  cfg = model.config
  guided = settings.guidance_scale != 0.0
  text_valid_BxLt = text_valid_BxLt.astype(bool)
  if guided:  # Unconditional twins: all-pad captions, like image-only training examples.
    text_BxLt = jnp.concatenate([text_BxLt, text_BxLt])
    text_valid_BxLt = jnp.concatenate([text_valid_BxLt, jnp.zeros_like(text_valid_BxLt)])
  logits_RxV, cache = prefill(params, model, text_BxLt, text_valid_BxLt,
                              init_cache(model, text_BxLt.shape[0]))
  step_fn = functools.partial(step, params, model)
  if settings.beam_size > 0:
    tokens_BxN, _ = beam_search.beam_search(
        step_fn, logits_RxV, cache, cfg.image_seq_len, settings.beam_size,
        guidance_scale=settings.guidance_scale, batch_axis=cache_batch_axis(model))
    return jnp.repeat(tokens_BxN, num_samples, axis=0)
  # Prompts are prefilled once; their samples share the prompt's cache rows.
  logits_RxV = autoregressive.repeat_rows(logits_RxV, num_samples)
  cache = autoregressive.repeat_rows(cache, num_samples, cache_batch_axis(model))
  return autoregressive.decode(
      step_fn, logits_RxV, cache, cfg.image_seq_len, rng, temperature=settings.temperature,
      top_k=settings.top_k, top_p=settings.top_p, guidance_scale=settings.guidance_scale)


def text_to_image(params, model: Dalle, text_tokens_BxLt, text_mask_BxLt, rng, cfg,
                  num_samples: int = 1) -> jax.Array:
  """int32 image token ids (B * num_samples) x Li, prompt-major, with settings `cfg`
  (config.sample or SampleSettings). Beam search is deterministic: its num_samples rows of
  a prompt are the same."""
  lt = model.config.text_seq_len
  if text_tokens_BxLt.shape[-1] != lt or text_mask_BxLt.shape != text_tokens_BxLt.shape:
    raise ValueError(f"text tokens {text_tokens_BxLt.shape} / mask {text_mask_BxLt.shape} do not "
                     f"match config.model.text_seq_len={lt}")
  if num_samples < 1:
    raise ValueError(f"num_samples={num_samples}: must be >= 1")
  return _generate(params, jnp.asarray(text_tokens_BxLt, jnp.int32), jnp.asarray(text_mask_BxLt),
                   rng, model=model, settings=SampleSettings.from_config(cfg),
                   num_samples=int(num_samples))


def preview_fn(params, batch: Batch, rng: jax.Array, *, model: Dalle,
               config: ml_collections.ConfigDict) -> jax.Array:
  """Text->image for the batch's captions with config.sample; int32 image token ids BxLi
  (the trainer decodes them)."""
  valid_BxLt = jnp.asarray(batch["text_mask"], bool) & jnp.asarray(batch["has_text"],
                                                                    bool)[:, None]
  return text_to_image(params, model, batch["text_tokens"], valid_BxLt, rng, config.sample)


def image_nll(params, batch: Batch, *, model: Dalle, config: ml_collections.ConfigDict
              ) -> jax.Array:
  """`upgen eval nll`: -log p(image | caption) per example, the sum of the image tokens'
  next-token cross-entropies (teacher forcing, no caption dropout)."""
  del config
  image_BxLi = jnp.asarray(batch["image_tokens"], jnp.int32)
  text_valid_BxLt = (jnp.asarray(batch["text_mask"], bool)
                     & jnp.asarray(batch["has_text"], bool)[:, None])
  _, image_logits = model.apply({"params": params}, jnp.asarray(batch["text_tokens"], jnp.int32),
                                text_valid_BxLt, image_BxLi, train=False)
  ce_BxLi = optax.softmax_cross_entropy_with_integer_labels(
      image_logits.astype(jnp.float32), image_BxLi)
  return jnp.sum(ce_BxLi, axis=1)


def sample_cost(config: ml_collections.ConfigDict, batch_size: int, param_bytes: int
                ) -> families.SampleCost:
  """KV-cache decoding: the prompt is prefilled, then each of the Li image tokens is one
  step over all rows (x2 with guidance) that reads the parameters and the cache so far.
  FLOPs: one causal forward over the stream per row."""
  c = DalleConfig.from_config(config.model)
  s = SampleSettings.from_config(config.sample)
  rows = batch_size * (2 if s.guidance_scale > 0 else 1) * max(s.beam_size, 1)
  forward = train_flops_per_example(config).total / 3
  itemsize = jnp.dtype(c.dtype).itemsize
  prompt = c.text_seq_len + 1
  mean_context = prompt + (c.image_seq_len - 1) / 2
  cache_bytes = 2 * c.num_layers * c.emb_dim * itemsize * rows * mean_context
  return families.SampleCost(
      flops=rows * forward,
      bytes=c.image_seq_len * (param_bytes + cache_bytes),
      note=(f"{rows} rows x {forward / 1e9:.3f} GFLOP causal forward; {c.image_seq_len} "
            f"steps x ({param_bytes / 1e6:.1f} MB parameters + K,V cache of {rows} rows x "
            f"{mean_context:.0f} positions on average)"))


def sample_images(params, text_tokens_BxLt, text_mask_BxLt, rng, *, model: Dalle,
                  config: ml_collections.ConfigDict) -> jax.Array:
  """`upgen sample`: image token ids BxLi, one per caption row (it repeats prompts itself)."""
  return text_to_image(params, model, text_tokens_BxLt, text_mask_BxLt, rng, config.sample)


FAMILY = Family(
    name="dalle", data_kind="tokens", make_model=make_model, dummy_batch=dummy_batch,
    init_variables=init_variables, loss_fn=loss_fn, preview_fn=preview_fn,
    sample_images=sample_images, caption_images=None,
    train_flops_per_example=train_flops_per_example, sample_cost=sample_cost,
    image_nll=image_nll)
