"""Samplers for the families that write image codes one at a time over a KV cache (the
decoder-only and the encoder-decoder families): text->image, inpainting and unconditional
images by cached decoding (upgen/sampling/autoregressive.py) or beam search (beam_search.py).

All take `params`, the family's module and the `SampleSettings` (temperature, top_k, top_p,
guidance_scale, beam_size), are jitted with the module and the settings static, and return
int32 image token ids. The module supplies the decoding steps as methods, run in its
`config.decode` mode, and this module owns the cache and the loop:

  allocate_cache(text_BxLt, valid_BxLt)  a forward that sizes every cache (used under eval_shape)
  prefill(text_BxLt, valid_BxLt)         the prompt into the cache -> logits of code 0, BxV
  feed_image_token(tokens_B, i)          code i into the cache -> logits of code i + 1, BxV

and its config has image_seq_len, text_seq_len, text_pad_id and scan_layers.

Classifier-free guidance: the unconditional stream's caption is empty (every text position
invalid), the stream of image-only examples and of caption dropout in training.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional

from flax import linen as nn
import jax
import jax.numpy as jnp

from upgen.sampling import autoregressive
from upgen.sampling import beam_search
from upgen.sampling.settings import SampleSettings


def decoder(model: nn.Module) -> nn.Module:
  """The same model in KV-cache mode (same params)."""
  return type(model)(dataclasses.replace(model.config, decode=True, remat="none"))


def cache_batch_axis(model: nn.Module) -> int:
  """Row axis of the cache leaves: nn.scan puts a layer axis in front."""
  return 1 if model.config.scan_layers else 0


def init_cache(model: nn.Module, batch_size: int) -> Any:
  """An empty KV cache for `batch_size` streams of the full length."""
  dec = decoder(model)
  text_BxLt = jnp.zeros((batch_size, model.config.text_seq_len), jnp.int32)
  shapes = jax.eval_shape(lambda: dec.init(jax.random.key(0), text_BxLt, text_BxLt > 0,
                                           method="allocate_cache"))["cache"]
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def prefill(params, model: nn.Module, text_BxLt, text_valid_BxLt, cache
            ) -> tuple[jax.Array, Any]:
  """Runs the prompts through the cache: (logits of image token 0, BxVi; cache)."""
  logits_BxV, state = decoder(model).apply({"params": params, "cache": cache}, text_BxLt,
                                           text_valid_BxLt, method="prefill", mutable=["cache"])
  return logits_BxV, state["cache"]


def step(params, model: nn.Module, tokens_B, cache, i) -> tuple[jax.Array, Any]:
  """Feeds image token i of every stream: (logits of image token i + 1, cache)."""
  logits_BxV, state = decoder(model).apply({"params": params, "cache": cache}, tokens_B, i,
                                           method="feed_image_token", mutable=["cache"])
  return logits_BxV, state["cache"]


@functools.partial(jax.jit, static_argnames=("model", "settings", "num_samples"))
def _generate(params, text_BxLt, text_valid_BxLt, rng, given_BxLi, known_BxLi, *,
              model: nn.Module, settings: SampleSettings, num_samples: int) -> jax.Array:
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
  if known_BxLi is not None:
    given_BxLi = jnp.repeat(given_BxLi, num_samples, axis=0)
    known_BxLi = jnp.repeat(known_BxLi.astype(bool), num_samples, axis=0)
  return autoregressive.decode(
      step_fn, logits_RxV, cache, cfg.image_seq_len, rng, temperature=settings.temperature,
      top_k=settings.top_k, top_p=settings.top_p, guidance_scale=settings.guidance_scale,
      given_BxN=given_BxLi, known_BxN=known_BxLi)


def _check_text(model: nn.Module, text_tokens_BxLt, text_mask_BxLt) -> None:
  lt = model.config.text_seq_len
  if text_tokens_BxLt.shape[-1] != lt or text_mask_BxLt.shape != text_tokens_BxLt.shape:
    raise ValueError(f"text tokens {text_tokens_BxLt.shape} / mask {text_mask_BxLt.shape} do not "
                     f"match the model's text_seq_len={lt} (config.data.text_seq_len)")


def text_to_image(params, model: nn.Module, text_tokens_BxLt, text_mask_BxLt, rng,
                  settings: SampleSettings, num_samples: int = 1,
                  given_BxLi: Optional[jax.Array] = None,
                  known_BxLi: Optional[jax.Array] = None) -> jax.Array:
  """int32 image token ids (B * num_samples) x Li, prompt-major. Beam search is
  deterministic: its num_samples rows of a prompt are the same. With `known_BxLi`, those
  tokens are `given_BxLi` (see `inpaint`)."""
  _check_text(model, text_tokens_BxLt, text_mask_BxLt)
  if num_samples < 1:
    raise ValueError(f"num_samples={num_samples}: must be >= 1")
  if known_BxLi is not None and settings.beam_size > 0:
    raise ValueError("inpainting samples token by token: set config.sample.beam_size=0")
  return _generate(params, jnp.asarray(text_tokens_BxLt, jnp.int32),
                   jnp.asarray(text_mask_BxLt), rng, given_BxLi, known_BxLi, model=model,
                   settings=settings, num_samples=int(num_samples))


def sample_images(params, text_tokens_BxLt, text_mask_BxLt, rng, *, model: nn.Module,
                  settings: SampleSettings) -> jax.Array:
  """Family entry: image token ids BxLi, one per caption row."""
  return text_to_image(params, model, text_tokens_BxLt, text_mask_BxLt, rng, settings)


def inpaint(params, image_tokens_BxLi, known_BxLi, text_tokens_BxLt, text_mask_BxLt, rng, *,
            model: nn.Module, settings: SampleSettings) -> jax.Array:
  """Family entry: the unknown tokens drawn in raster order given the caption and every
  token before them (known tokens after an unknown one cannot inform it: the model is
  causal); known tokens are kept."""
  if image_tokens_BxLi.shape != known_BxLi.shape:
    raise ValueError(f"inpaint: image tokens {image_tokens_BxLi.shape} and known mask "
                     f"{known_BxLi.shape} differ in shape")
  return text_to_image(params, model, text_tokens_BxLt, text_mask_BxLt, rng, settings,
                       given_BxLi=jnp.asarray(image_tokens_BxLi, jnp.int32),
                       known_BxLi=jnp.asarray(known_BxLi, bool))


def unconditional_images(params, rng, *, model: nn.Module, settings: SampleSettings,
                         num: int) -> jax.Array:
  """Family entry: `num` images from the all-pad caption, unguided."""
  cfg = model.config
  text_BxLt = jnp.full((num, cfg.text_seq_len), cfg.text_pad_id, jnp.int32)
  return text_to_image(params, model, text_BxLt, jnp.zeros(text_BxLt.shape, bool), rng,
                       dataclasses.replace(settings, guidance_scale=0.0))
