"""Samplers for the UPGen family: text->image, inpainting, unconditional image, image->text.

All take `params` (the "params" collection), the `UPGen` module, and the `SampleSettings`
(num_steps, schedule, temperature, temperature_schedule, choice_temperature, guidance_scale,
text_steps). They are jitted with the module and the settings static, and return token ids
(int32); decoding image tokens to pixels is the image tokenizer's job.

Classifier-free guidance (image decoding only): the unconditional prediction is the model's
on the image with every text key masked out of attention, which is exactly how the model sees
image-only examples in training (data.text_dropout), so no extra "null caption" is needed.
With no text key to attend, the image positions' outputs are those of the image alone, so the
unconditional stream runs the image positions only (Li, not Li + Lt: `guided_logits`), and
an unconditional image is decoded the same way.

Parameters are cast to the compute dtype once per call, before the decoding loop
(`compute_dtype_params`), not at every layer of every step.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Optional

from flax import linen as nn
import jax
import jax.numpy as jnp

from upgen.sampling import maskgit
from upgen.sampling.settings import SampleSettings


def _apply(params, model: nn.Module, image_BxLi, text_BxLt, text_mask_BxLt):
  has_image_B = jnp.ones(image_BxLi.shape[:1], bool)
  return model.apply({"params": params}, image_BxLi, text_BxLt, text_mask_BxLt, has_image_B,
                     train=False)


def compute_dtype_params(params, dtype):
  """`params` with every kernel and embedding table (float, wider than `dtype`) cast to the
  compute dtype `dtype`: what every Dense and Embed casts them to before use, so a model's
  outputs are bit for bit the same. Norm scales, biases and the type embedding (added in
  float32) keep their dtype."""
  def cast(path, x):
    name = getattr(path[-1], "key", None)
    wider = (jnp.issubdtype(x.dtype, jnp.floating)
             and jnp.dtype(x.dtype).itemsize > jnp.dtype(dtype).itemsize)
    return x.astype(dtype) if name in ("kernel", "embedding") and wider else x
  return jax.tree_util.tree_map_with_path(cast, params)


def image_alone(text_BxLt):
  """A zero-length text: the model then runs the image positions alone (UPGen.__call__)."""
  return text_BxLt[:, :0]


def guided_logits(params, model: nn.Module, image_BxLi, text_BxLt, text_mask_BxLt):
  """(cond, uncond) image logits: with the caption, and with every text key masked out,
  which is the image alone (Li positions instead of Li + Lt)."""
  cond_BxLixV = _apply(params, model, image_BxLi, text_BxLt, text_mask_BxLt)[0]
  uncond_BxLixV = _apply(params, model, image_BxLi, image_alone(text_BxLt),
                         image_alone(text_mask_BxLt))[0]
  return cond_BxLixV, uncond_BxLixV


@functools.partial(jax.jit, static_argnames=("model", "settings"))
def _decode_image(params, image_tokens_BxLi, known_BxLi, text_tokens_BxLt, text_mask_BxLt, rng,
                  *, model: nn.Module, settings: SampleSettings) -> jax.Array:
  cfg = model.config
  text_mask_BxLt = text_mask_BxLt.astype(bool)
  params = compute_dtype_params(params, cfg.dtype)

  def logits_fn(image_BxLi):
    return _apply(params, model, image_BxLi, text_tokens_BxLt, text_mask_BxLt)[0]

  def guided_logits_fn(image_BxLi):
    return guided_logits(params, model, image_BxLi, text_tokens_BxLt, text_mask_BxLt)

  return maskgit.decode(
      logits_fn, image_tokens_BxLi, known_BxLi, cfg.image_mask_id, rng, settings.num_steps,
      settings.schedule, settings.temperature, settings.choice_temperature,
      settings.guidance_scale, guided_logits_fn, settings.temperature_schedule)


@functools.partial(jax.jit, static_argnames=("model",))
def raster_image_nll(params, image_tokens_BxLi, text_tokens_BxLt, text_mask_BxLt, *,
                     model: nn.Module) -> jax.Array:
  """-log p(image | caption) per example (nats), decoding one token per step in raster order:
  step i scores token i with tokens < i given and tokens >= i masked. Any fixed order of
  one-token steps is an exact factorization, so this is a likelihood the masked model
  assigns (with its own order), comparable per token with an autoregressive model's loss."""
  cfg = model.config
  text_mask_BxLt = text_mask_BxLt.astype(bool)
  params = compute_dtype_params(params, cfg.dtype)
  positions_Li = jnp.arange(cfg.image_seq_len)

  def step(total_B, i):
    image_BxLi = jnp.where(positions_Li[None] < i, image_tokens_BxLi, cfg.image_mask_id)
    logits_BxLixV = _apply(params, model, image_BxLi, text_tokens_BxLt, text_mask_BxLt)[0]
    logp_BxV = jax.nn.log_softmax(logits_BxLixV[:, i].astype(jnp.float32))
    return total_B - jnp.take_along_axis(logp_BxV, image_tokens_BxLi[:, i, None], 1)[:, 0], None

  total_B, _ = jax.lax.scan(step, jnp.zeros(image_tokens_BxLi.shape[:1]), positions_Li)
  return total_B


def _check_text(model: nn.Module, text_tokens_BxLt, text_mask_BxLt):
  lt = model.config.text_seq_len
  if text_tokens_BxLt.shape[-1] != lt or text_mask_BxLt.shape != text_tokens_BxLt.shape:
    raise ValueError(f"text tokens {text_tokens_BxLt.shape} / mask {text_mask_BxLt.shape} do not "
                     f"match the model's text_seq_len={lt} (config.data.text_seq_len)")


def text_to_image(params, model: nn.Module, text_tokens_BxLt, text_mask_BxLt, rng,
                  settings: SampleSettings) -> jax.Array:
  """Image token ids BxLi (int32) for each caption, guided by settings.guidance_scale."""
  _check_text(model, text_tokens_BxLt, text_mask_BxLt)
  shape = (text_tokens_BxLt.shape[0], model.config.image_seq_len)
  return _decode_image(params, jnp.zeros(shape, jnp.int32), jnp.zeros(shape, bool),
                       jnp.asarray(text_tokens_BxLt), jnp.asarray(text_mask_BxLt), rng,
                       model=model, settings=settings)


def inpaint(params, model: nn.Module, image_tokens_BxLi, known_BxLi, text_tokens_BxLt,
            text_mask_BxLt, rng, settings: SampleSettings) -> jax.Array:
  """Re-generates image tokens where `known_BxLi` is False; known tokens are kept as given."""
  _check_text(model, text_tokens_BxLt, text_mask_BxLt)
  if image_tokens_BxLi.shape != known_BxLi.shape:
    raise ValueError(f"inpaint: image tokens {image_tokens_BxLi.shape} and known mask "
                     f"{known_BxLi.shape} differ in shape")
  return _decode_image(params, jnp.asarray(image_tokens_BxLi), jnp.asarray(known_BxLi, bool),
                       jnp.asarray(text_tokens_BxLt), jnp.asarray(text_mask_BxLt), rng,
                       model=model, settings=settings)


def unconditional_image(params, model: nn.Module, batch_size: int, rng,
                        settings: SampleSettings) -> jax.Array:
  """Image token ids BxLi with no caption (the image alone, as with every text key masked
  out; no guidance)."""
  c = model.config
  no_text_Bx0 = jnp.zeros((batch_size, 0), jnp.int32)
  settings = dataclasses.replace(settings, guidance_scale=0.0)
  shape = (batch_size, c.image_seq_len)
  return _decode_image(params, jnp.zeros(shape, jnp.int32), jnp.zeros(shape, bool),
                       no_text_Bx0, no_text_Bx0.astype(bool), rng, model=model,
                       settings=settings)


def _decode_text_impl(params, image_tokens_BxLi, length_B, rng, *, model: nn.Module,
                      settings: SampleSettings) -> jax.Array:
  c = model.config
  params = compute_dtype_params(params, c.dtype)
  # Every position is a text slot the model reads (text_pads="tokens"); those from length_B
  # on are fixed [PAD], the others start as [MASK] and are decoded, [PAD] included.
  slots_BxLt = jnp.ones((image_tokens_BxLi.shape[0], c.text_seq_len), bool)
  fixed_BxLt = jnp.arange(c.text_seq_len)[None, :] >= length_B[:, None]
  init_BxLt = jnp.full(slots_BxLt.shape, c.text_pad_id, jnp.int32)

  def logits_fn(text_BxLt):
    return _apply(params, model, image_tokens_BxLi, text_BxLt, slots_BxLt)[1]

  return maskgit.decode(logits_fn, init_BxLt, fixed_BxLt, c.text_mask_id, rng,
                        settings.text_steps, settings.schedule, settings.temperature,
                        settings.choice_temperature,
                        temperature_schedule=settings.temperature_schedule)


_decode_text = jax.jit(_decode_text_impl, static_argnames=("model", "settings"))


def _check_image(model: nn.Module, image_tokens_BxLi) -> None:
  if image_tokens_BxLi.shape[-1] != model.config.image_seq_len:
    raise ValueError(f"image tokens {image_tokens_BxLi.shape} do not match "
                     f"the model's image_seq_len={model.config.image_seq_len}")


def image_to_text(params, model: nn.Module, image_tokens_BxLi, rng, settings: SampleSettings,
                  text_length: Optional[int] = None) -> jax.Array:
  """Text token ids BxLt (int32) for each image, decoded in settings.text_steps MaskGIT
  steps over every text position: the model writes the caption and then [PAD]s, so the
  caption's length is its own (the text tokenizer's decode drops the pads). `text_length`
  fixes [PAD] from that position on instead. Needs a model trained with
  config.model.text_pads="tokens": one that never saw padding as tokens cannot end a
  caption."""
  c = model.config
  if c.text_pads != "tokens":
    raise ValueError(f"image->text needs config.model.text_pads='tokens'; this model has "
                     f"{c.text_pads!r} (it never learned where a caption ends): train with "
                     "--config.model.text_pads=tokens")
  text_length = c.text_seq_len if text_length is None else int(text_length)
  if not 1 <= text_length <= c.text_seq_len:
    raise ValueError(f"image_to_text: text_length={text_length} must be in "
                     f"[1, text_seq_len={c.text_seq_len}]")
  _check_image(model, image_tokens_BxLi)
  length_B = jnp.full(image_tokens_BxLi.shape[:1], text_length, jnp.int32)
  return _decode_text(params, jnp.asarray(image_tokens_BxLi), length_B, rng, model=model,
                      settings=settings)
