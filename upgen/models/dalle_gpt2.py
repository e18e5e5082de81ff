"""The decoder-only family's "gpt2" architecture (config.model.architecture="gpt2"): GPT-2's
network over the documents of "Pre-trained language models do not help auto-regressive
text-to-image generation", so a pretrained GPT-2 (`upgen import hf --family dalle`) starts
it and `upgen export hf` writes it back.

Network (transformers' GPT2LMHeadModel): one token table `token_embed`, tied (the logits are
the final hidden states times its transpose; with config.model.tie_embeddings=False, an
output table `lm_head` of the same shape, GPT-2's untied head); a learned absolute position table
`pos_embed` of max(config.model.max_positions, document length) rows; pre-LN blocks with
biases, LayerNorm epsilon 1e-5 and gelu_new (tanh GELU); a final LayerNorm.

Vocabulary (table rows, padded to a multiple of 128):
  [0, Vt)            the text tokenizer's ids (an imported LM's own vocabulary: all of its
                     rows, config.model.lm_vocab_size, where it has more than the tokenizer)
  Vt + 0 .. Vt + 5   <doc> <text> </text> <image> </image> </doc>
  Vt + 6             <pad>
  Vt + 7 + code      the image codebook (Vi rows; none for text-only records)

Documents: `<doc> <text> caption </text> <image> codes </image> </doc>`. Records hold
captions right-padded to Lt; a document is laid out left-padded, so all have the same
length S = Lt + Li + 6 and the image codes sit at the same slots in every row:

  slots  [0, Lt-n)  Lt-n   Lt-n+1  [Lt-n+2, Lt+2)  Lt+2     Lt+3     [Lt+4, Lt+4+Li)  ...
         <pad>      <doc>  <text>  caption (n)     </text>  <image>  codes            </image> </doc>

Pads are masked out as keys and positions count from <doc>, so every real token sees what it
would see in the packed document padded at its end: the logits and the loss are GPT-2's on
the paper's documents. Records without an image tokenizer (text only) are plain language
modeling: the document is the text alone, left-padded, read as GPT-2 reads text.

Loss: next-token cross-entropy with logits over the tokens that can occur (text, document
tokens and codes; text alone for text-only records; never <pad> or padding rows). Caption
tokens with </text> (text-only records: every token after the first) and image codes are
each averaged over their own count and mixed by config.loss's weights; the tokens the layout
fixes (<text>, <image>, </image>, </doc>) are not scored. Sampling reads the image slots'
logits cut to the codebook: an image position never emits a text id.
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
from upgen import flops
from upgen.families import Batch
from upgen.models import layers

DOC_TOKENS = ("<doc>", "<text>", "</text>", "<image>", "</image>", "</doc>")
DOC, TEXT, END_TEXT, IMAGE, END_IMAGE, END_DOC = range(len(DOC_TOKENS))
# config.model values the architecture fixes (GPT-2's).
FIXED = {"norm_position": "pre", "norm_eps": 1e-5, "activation": "gelu_tanh"}


@dataclasses.dataclass(frozen=True)
class Layout:
  """Token ids and document slots of a "gpt2" model (see the module docstring)."""
  text_vocab_size: int
  image_vocab_size: int
  text_seq_len: int
  image_seq_len: int

  @property
  def text_only(self) -> bool:
    return self.image_seq_len == 0

  def doc_id(self, which: int) -> int:
    return self.text_vocab_size + which

  @property
  def pad_id(self) -> int:
    return self.text_vocab_size + len(DOC_TOKENS)

  @property
  def image_offset(self) -> int:
    return self.pad_id + 1

  @property
  def vocab_size(self) -> int:
    """Real rows: text, document tokens, <pad>, codes (text only: the text ids alone are
    used, but the rows are the same, so an LM's table is a prefix of its adaptation's)."""
    return self.image_offset + self.image_vocab_size

  @property
  def caption_slots(self) -> int:
    """Pads, <doc> <text> caption </text> (text only: pads, text)."""
    return self.text_seq_len + (0 if self.text_only else 3)

  @property
  def prompt_len(self) -> int:
    """Slots up to and with <image>: its output predicts code 0."""
    return self.caption_slots + 1

  @property
  def doc_len(self) -> int:
    return self.text_seq_len if self.text_only else self.prompt_len + self.image_seq_len + 2

  def emittable(self) -> np.ndarray:
    """bool [rows]: the ids the logits may put mass on."""
    ok = np.zeros(layers.pad_vocab(self.vocab_size), bool)
    ok[:self.text_vocab_size] = True
    if not self.text_only:
      ok[self.text_vocab_size:self.pad_id] = True
      ok[self.image_offset:self.vocab_size] = True
    return ok


def layout(cfg: Any) -> Layout:
  return Layout(cfg.text_vocab_size, cfg.image_vocab_size, cfg.text_seq_len, cfg.image_seq_len)


def caption_part(text_BxLt: jax.Array, valid_BxLt: jax.Array, lay: Layout
                 ) -> tuple[jax.Array, jax.Array]:
  """(ids BxC, pads B) of the first C = lay.caption_slots slots: the valid caption tokens
  (in order, wherever they sit) right-aligned after the pads."""
  text_BxLt = jnp.asarray(text_BxLt, jnp.int32)
  valid_BxLt = jnp.asarray(valid_BxLt, bool)
  lt = text_BxLt.shape[1]
  order_BxLt = jnp.argsort(~valid_BxLt, axis=1, stable=True)  # Valid tokens first.
  text_BxLt = jnp.take_along_axis(text_BxLt, order_BxLt, axis=1)
  n_B = jnp.sum(valid_BxLt, axis=1).astype(jnp.int32)
  pads_B = lt - n_B
  k_BxC = jnp.arange(lay.caption_slots)[None] - pads_B[:, None]  # Index in the real part.
  if lay.text_only:
    ids = jnp.take_along_axis(text_BxLt, jnp.clip(k_BxC, 0, lt - 1), axis=1)
    return jnp.where(k_BxC >= 0, ids, lay.pad_id), pads_B
  caption = jnp.take_along_axis(text_BxLt, jnp.clip(k_BxC - 2, 0, lt - 1), axis=1)
  n = n_B[:, None]
  ids = jnp.select([k_BxC < 0, k_BxC == 0, k_BxC == 1, k_BxC < n + 2],
                   [lay.pad_id, lay.doc_id(DOC), lay.doc_id(TEXT), caption],
                   lay.doc_id(END_TEXT))
  return ids, pads_B


def document(text_BxLt, valid_BxLt, image_BxLi, lay: Layout) -> tuple[jax.Array, jax.Array]:
  """(ids BxS, pads B): the whole left-padded document."""
  ids_BxC, pads_B = caption_part(text_BxLt, valid_BxLt, lay)
  if lay.text_only:
    return ids_BxC, pads_B
  b = ids_BxC.shape[0]
  tail = lambda which: jnp.full((b, 1), lay.doc_id(which), jnp.int32)
  codes = jnp.asarray(image_BxLi, jnp.int32) + lay.image_offset
  return jnp.concatenate([ids_BxC, tail(IMAGE), codes, tail(END_IMAGE), tail(END_DOC)],
                         axis=1), pads_B


def positions(slots_T: jax.Array, pads_B: jax.Array) -> jax.Array:
  """BxT: position of each slot counted from the first real token (pads get 0)."""
  return jnp.maximum(slots_T[None, :] - pads_B[:, None], 0).astype(jnp.int32)


def attention_mask(pads_B: jax.Array, query_slots_T: jax.Array, key_len: int) -> jax.Array:
  """Bx1xTxS: real keys only; a pad query may attend the pads (so no row is empty)."""
  key_real_BxS = jnp.arange(key_len)[None] >= pads_B[:, None]
  query_pad_BxT = query_slots_T[None] < pads_B[:, None]
  return (key_real_BxS[:, None, :] | query_pad_BxT[:, :, None])[:, None]


class _DocState(nn.Module):
  """Decoding: each row's key mask and pad count, in the "cache" collection."""

  @nn.compact
  def __call__(self, rows: tuple[int, ...], length: int):
    return (self.variable("cache", "key_real", jnp.zeros, rows + (length,), bool),
            self.variable("cache", "pads", jnp.zeros, rows, jnp.int32))


class Gpt2(nn.Module):
  """Training / scoring: (ids BxT of slots [0, T), pads B) -> logits BxTxRows (float32, -inf
  where not emittable). Decoding (config.decode): `prefill`, then `feed_image_token`."""
  config: Any  # dalle.DalleConfig with architecture "gpt2".

  def setup(self):
    cfg = self.config
    lay = layout(cfg)
    self.token_embed = layers.Embed(layers.pad_vocab(lay.vocab_size), cfg.emb_dim,
                                    dtype=cfg.dtype, param_dtype=cfg.param_dtype)
    if not cfg.tie_embeddings:  # An output table of its own, a row per token.
      self.lm_head = layers.Embed(layers.pad_vocab(lay.vocab_size), cfg.emb_dim,
                                  dtype=cfg.dtype, param_dtype=cfg.param_dtype)
    self.pos_embed = self.param(
        "pos_embed", nn.with_logical_partitioning(nn.initializers.normal(0.01),
                                                  (None, "embed")),
        (max(cfg.max_positions, lay.doc_len), cfg.emb_dim), cfg.param_dtype)
    self.dropout = nn.Dropout(cfg.dropout_rate)
    self.decoder = layers.TransformerStack(cfg.stack())
    self.final_norm = layers.LayerNorm(cfg.dtype, cfg.param_dtype, cfg.norm_eps)
    self.doc_state = _DocState()

  def hidden(self, ids_BxT, pos_BxT, mask, *, train: bool = False) -> jax.Array:
    cfg = self.config
    pos_BxTxE = jnp.take(jnp.asarray(self.pos_embed, cfg.dtype), pos_BxT, axis=0)
    x_BxTxE = self.dropout(self.token_embed(ids_BxT) + pos_BxTxE, deterministic=not train)
    x_BxTxE = nn.with_logical_constraint(x_BxTxE, ("batch", "length", "embed"))
    return self.final_norm(self.decoder(x_BxTxE, mask, deterministic=not train))

  def _head(self) -> layers.Embed:
    return self.token_embed if self.config.tie_embeddings else self.lm_head

  def logits(self, h_BxTxE: jax.Array) -> jax.Array:
    logits_BxTxV = self._head().attend(h_BxTxE).astype(jnp.float32)
    logits_BxTxV = nn.with_logical_constraint(logits_BxTxV, ("batch", "length", "vocab"))
    return jnp.where(layout(self.config).emittable(), logits_BxTxV, -jnp.inf)

  def __call__(self, ids_BxT: jax.Array, pads_B: jax.Array, *, train: bool = False
               ) -> jax.Array:
    slots_T = jnp.arange(ids_BxT.shape[1])
    h = self.hidden(ids_BxT, positions(slots_T, pads_B),
                    attention_mask(pads_B, slots_T, ids_BxT.shape[1]), train=train)
    return self.logits(h)

  # Decoding. The cache holds, beside every block's keys and values, each row's key mask and
  # pad count (with a leading axis of 1 under scan_layers, so every cache leaf has its rows
  # on the same axis, ar_sampler.cache_batch_axis).
  def _image_logits(self, h_BxTxE: jax.Array) -> jax.Array:
    lay = layout(self.config)
    logits = self._head().attend(h_BxTxE[:, -1:])[:, 0].astype(jnp.float32)
    return logits[:, lay.image_offset:lay.vocab_size]

  def _doc_state(self, batch: int):
    lead = (1,) if self.config.scan_layers else ()
    return self.doc_state(lead + (batch,), layout(self.config).doc_len)

  def _check_images(self):
    if layout(self.config).text_only:
      raise errors.ConfigError("this decoder-only run is a text-only language model (its "
                               "records have no image tokenizer): it cannot draw images")

  def allocate_cache(self, text_BxLt: jax.Array, text_valid_BxLt: jax.Array) -> jax.Array:
    """A forward over a whole document, which sizes the cache (under eval_shape)."""
    del text_valid_BxLt
    self._check_images()
    b, length = text_BxLt.shape[0], layout(self.config).doc_len
    self._doc_state(b)
    ids = jnp.zeros((b, length), jnp.int32)
    return self._image_logits(self.hidden(ids, jnp.zeros_like(ids), None))

  def prefill(self, text_BxLt: jax.Array, text_valid_BxLt: jax.Array) -> jax.Array:
    """Pads, <doc> <text> caption </text> <image> into the cache -> logits of code 0."""
    self._check_images()
    lay = layout(self.config)
    ids_BxC, pads_B = caption_part(text_BxLt, text_valid_BxLt, lay)
    b = ids_BxC.shape[0]
    ids_BxP = jnp.concatenate([ids_BxC, jnp.full((b, 1), lay.doc_id(IMAGE), jnp.int32)], 1)
    key_real, pads = self._doc_state(b)
    key_real.value = jnp.arange(lay.doc_len)[None] >= pads_B[:, None]
    pads.value = pads_B
    if self.config.scan_layers:
      key_real.value, pads.value = key_real.value[None], pads.value[None]
    slots_P = jnp.arange(lay.prompt_len)
    h = self.hidden(ids_BxP, positions(slots_P, pads_B),
                    attention_mask(pads_B, slots_P, lay.doc_len))
    return self._image_logits(h)

  def feed_image_token(self, tokens_B: jax.Array, i) -> jax.Array:
    """Code i of every row into the cache -> logits of code i + 1, BxVi."""
    lay = layout(self.config)
    key_real, pads = self._doc_state(tokens_B.shape[0])
    key_real_BxS, pads_B = key_real.value, pads.value
    if self.config.scan_layers:
      key_real_BxS, pads_B = key_real_BxS[0], pads_B[0]
    slot = lay.prompt_len + i
    ids_Bx1 = (tokens_B.astype(jnp.int32) + lay.image_offset)[:, None]
    pos_Bx1 = (slot - pads_B)[:, None]
    return self._image_logits(self.hidden(ids_Bx1, pos_Bx1, layers.key_mask(key_real_BxS)))


def scored(ids_BxS: jax.Array, pads_B: jax.Array, batch: Batch, dropped_B: jax.Array,
           lay: Layout) -> tuple[jax.Array, jax.Array]:
  """(text, image) bool Bx(S-1): which next-token targets ids[:, 1:] each loss scores."""
  s = ids_BxS.shape[1]
  target_slot = jnp.arange(1, s)[None]
  has_text_B = jnp.asarray(batch["has_text"], bool) & ~dropped_B
  if lay.text_only:
    text = target_slot > pads_B[:, None]  # Every token after the first real one.
    return text & has_text_B[:, None], jnp.zeros_like(text)
  text = (target_slot >= pads_B[:, None] + 2) & (target_slot <= lay.text_seq_len + 2)
  first_code = lay.prompt_len
  image = (target_slot >= first_code) & (target_slot < first_code + lay.image_seq_len)
  has_image_B = jnp.asarray(batch["has_image"], bool)
  return text & has_text_B[:, None], image & has_image_B[:, None]


def stream_loss(params, batch: Batch, dropped_B: jax.Array, dropout_rng: jax.Array, *,
                model: Gpt2, settings: Any, train: bool):
  """Cross-entropy on the documents, captions of `dropped_B` left empty (see dalle.py; a
  language model on text records drops nothing: its text is no condition)."""
  lay = layout(model.config)
  if lay.text_only:
    dropped_B = jnp.zeros_like(dropped_B)
  valid_BxLt = jnp.asarray(batch["text_mask"], bool) & ~dropped_B[:, None] & jnp.asarray(
      batch["has_text"], bool)[:, None]
  ids_BxS, pads_B = document(batch["text_tokens"], valid_BxLt, batch["image_tokens"], lay)
  logits = model.apply({"params": params}, ids_BxS[:, :-1], pads_B, train=train,
                       rngs={"dropout": dropout_rng})
  targets = ids_BxS[:, 1:]
  text_w, image_w = scored(ids_BxS, pads_B, batch, dropped_B, lay)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
  n_text, n_image = jnp.sum(text_w).astype(jnp.float32), jnp.sum(image_w).astype(jnp.float32)
  mean = lambda w, x, n: jnp.sum(jnp.where(w, x, 0.0)) / jnp.maximum(n, 1.0)
  loss_text, loss_image = mean(text_w, ce, n_text), mean(image_w, ce, n_image)
  if lay.text_only:
    total = loss_text
  else:
    total = settings.text_loss_weight * loss_text + settings.image_loss_weight * loss_image
  metrics = dict(loss=total, loss_text=loss_text, acc_text=mean(text_w, correct, n_text),
                 num_text_tokens=n_text,
                 captions_dropped=jnp.sum(dropped_B & jnp.asarray(batch["has_text"], bool)
                                          ).astype(jnp.float32))
  if not lay.text_only:
    metrics.update(loss_image=loss_image, acc_image=mean(image_w, correct, n_image),
                   num_image_tokens=n_image)
  return total, metrics


def init_variables(model: Gpt2, rng: jax.Array, batch: Batch) -> dict[str, Any]:
  lay = layout(model.config)
  ids, pads = document(batch["text_tokens"], batch["text_mask"], batch["image_tokens"], lay)
  return model.init({"params": rng}, ids[:, :-1], pads, train=False)


def image_nll(params, batch: Batch, *, model: Gpt2) -> jax.Array:
  """-log p(image | caption) per example, over the codebook (as the sampler draws)."""
  lay = layout(model.config)
  valid_BxLt = jnp.asarray(batch["text_mask"], bool) & jnp.asarray(batch["has_text"],
                                                                   bool)[:, None]
  ids, pads = document(batch["text_tokens"], valid_BxLt, batch["image_tokens"], lay)
  logits = model.apply({"params": params}, ids[:, :-1], pads, train=False)
  first = lay.prompt_len - 1  # The input slot that predicts code 0.
  image_logits = logits[:, first:first + lay.image_seq_len, lay.image_offset:lay.vocab_size]
  return jnp.sum(optax.softmax_cross_entropy_with_integer_labels(
      image_logits, jnp.asarray(batch["image_tokens"], jnp.int32)), axis=1)


def train_flops(c: Any) -> flops.FlopCount:
  """One document of S - 1 inputs, causal, logits over every table row at every input."""
  lay = layout(c)
  length = lay.doc_len - 1
  return flops.Transformer(c.num_layers, c.emb_dim, c.mlp_dim, length, causal=True,
                           heads=((length, layers.pad_vocab(lay.vocab_size)),)).train_flops()


def param_groups(c: Any) -> dict[str, tuple[str, ...]]:
  """config.optim.freeze / config.train.init_groups groups (upgen.families.member patterns).

  The paper's fine-tuning settings, as what to freeze: embeddings and output only =
  "positions,norms,attention,mlp"; + norms and positions = "attention,mlp"; + the first half
  of the blocks = "second_half"; + the MLPs = "attention". "text_rows" is the token table's
  text rows alone (an LM's own vocabulary; and the output table's, where untied), so the
  rows the expansion added still train."""
  n = c.num_layers
  blocks = lambda ids: tuple(f"decoder/layers_{i}/(attn|mlp)" for i in ids)
  return {
      "embeddings": ("token_embed", "lm_head"),
      "text_rows": (f"token_embed/embedding[:{c.text_vocab_size}]",
                    f"lm_head/embedding[:{c.text_vocab_size}]"),
      "positions": ("pos_embed",),
      "norms": (r"decoder/layers_\d+/ln_\w+", "final_norm"),
      "attention": (r"decoder/layers_\d+/attn",),
      "mlp": (r"decoder/layers_\d+/mlp",),
      "first_half": blocks(range(n // 2)),
      "second_half": blocks(range(n // 2, n)),
  }


def context(c: Any) -> int:
  """The positions the model was made for: its table's rows (an LM's original context)."""
  return max(c.max_positions, layout(c).doc_len)


def text_nll(params, ids_BxT: jax.Array, pads_B: jax.Array, *, model: Gpt2
             ) -> tuple[jax.Array, jax.Array]:
  """(nats BxT-1, scored BxT-1): -log p(token s+1 | tokens <= s) of left-padded plain text
  (no document tokens, `pads_B` leading pads), scored from the second real token on; the
  distribution is the model's over every token it can emit, as transformers computes it."""
  logits = model.apply({"params": params}, ids_BxT, pads_B)
  logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
  nll = -jnp.take_along_axis(logp, ids_BxT[:, 1:, None].astype(jnp.int32), axis=-1)[..., 0]
  scored = jnp.arange(1, ids_BxT.shape[1])[None] > pads_B[:, None]
  return jnp.where(scored, nll, 0.0), scored
