"""DALL-E's discrete VAE (dVAE) image tokenizer family: model, loss and the `FAMILY` record.

Parameters are `{"encoder": ..., "decoder": ...}` (models/dvae_layers.py). Training maximizes
DALL-E's relaxed ELB, per pixel dimension:

  loss = (sum_pixels NLL(x | decoder(z)) + beta(step) * sum_cells KL(q(. | x) || uniform))
         / (H * W * 3)

- pixels are mapped from [0, 1] to [eps, 1 - eps] (eps = 0.1) before the encoder and as the
  target of the logit-Laplace likelihood (`logit_laplace_nll`), and mapped back when decoding;
- z is the gumbel-softmax relaxation of the encoder's logits at temperature tau(step),
  annealed 1 -> 1/16 over `config.loss.temperature_steps` (cosine);
- beta ramps 0 -> `config.loss.kl_weight` (6.6) over `config.loss.kl_warmup_steps` (cosine).

Without `train` (validation) z is the argmax one-hot, the codes the tokenizer gives. Encoding
takes the argmax code of each cell; decoding feeds the one-hot codes to the decoder and
returns sigmoid of the location, mapped back to [0, 1].
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

from flax import linen as nn
import jax
import jax.numpy as jnp

from upgen import errors
from upgen import families
from upgen import schema
from upgen.data import readers
from upgen.data.spec import DataSpec
from upgen.models import dvae_layers as layers
from upgen.models import image_metrics
from upgen.models.dvae_layers import DVAEConfig

EPS = 0.1  # Pixels live in [EPS, 1 - EPS] for the logit-Laplace likelihood (DALL-E).


@dataclasses.dataclass(frozen=True)
class DVAELoss:
  """config.loss: the KL weight's and the temperature's schedules."""
  kl_weight: float = 6.6  # Final weight (beta) of the KL to the uniform prior.
  kl_warmup_steps: int = 5000  # Steps over which beta ramps 0 -> kl_weight.
  temperature_start: float = 1.0  # Gumbel-softmax temperature at step 0.
  temperature_end: float = 1.0 / 16  # ... and after temperature_steps.
  temperature_steps: int = 150_000  # Steps over which the temperature anneals.

  def __post_init__(self):
    for key in ("kl_weight", "kl_warmup_steps", "temperature_steps"):
      if getattr(self, key) < 0:
        raise errors.ConfigError(f"config.loss.{key}={getattr(self, key)}: must be >= 0")
    for key in ("temperature_start", "temperature_end"):
      if getattr(self, key) <= 0:
        raise errors.ConfigError(f"config.loss.{key}={getattr(self, key)}: must be > 0")


class DVAEModel(nn.Module):
  """Top-level module of the family: params {"encoder": ..., "decoder": ...}."""
  cfg: DVAEConfig

  def setup(self):
    self.encoder = layers.Encoder(self.cfg)
    self.decoder = layers.Decoder(self.cfg)

  def __call__(self, x_BxHxWx3: jax.Array) -> jax.Array:
    """Mapped pixels -> logit-Laplace statistics of the argmax codes' reconstruction."""
    return self.decode_stats(self.encode(x_BxHxWx3))

  def logits(self, x_BxHxWx3: jax.Array) -> jax.Array:
    return self.encoder(x_BxHxWx3)

  def decode_relaxed(self, z_BxhxwxK: jax.Array) -> jax.Array:
    return self.decoder(z_BxhxwxK)

  def encode(self, x_BxHxWx3: jax.Array) -> jax.Array:
    """Mapped pixels -> int32 argmax codes B x h x w."""
    return jnp.argmax(self.encoder(x_BxHxWx3), axis=-1).astype(jnp.int32)

  def decode_stats(self, ids_Bxhxw: jax.Array) -> jax.Array:
    return self.decoder(jax.nn.one_hot(ids_Bxhxw, self.cfg.codebook_size, dtype=self.cfg.dtype))


def map_pixels(image_BxHxWx3: jax.Array) -> jax.Array:
  """uint8 pixels -> float32 in [EPS, 1 - EPS]."""
  return jnp.asarray(image_BxHxWx3, jnp.float32) / 255.0 * (1 - 2 * EPS) + EPS


def unmap_pixels(x_BxHxWx3: jax.Array) -> jax.Array:
  """[EPS, 1 - EPS] -> [0, 1] (clipped)."""
  return jnp.clip((x_BxHxWx3 - EPS) / (1 - 2 * EPS), 0.0, 1.0)


def to_uint8(x01_BxHxWx3: jax.Array) -> jax.Array:
  return jnp.round(jnp.clip(x01_BxHxWx3, 0.0, 1.0) * 255.0).astype(jnp.uint8)


def stats_to_pixels(stats_BxHxWx6: jax.Array) -> jax.Array:
  """The decoder's statistics -> pixels in [0, 1]: sigmoid of the location, unmapped."""
  return unmap_pixels(jax.nn.sigmoid(stats_BxHxWx6[..., :3]))


def logit_laplace_nll(x_BxHxWx3: jax.Array, mu_BxHxWx3: jax.Array,
                      log_b_BxHxWx3: jax.Array) -> jax.Array:
  """-log of the logit-Laplace density at x in (0, 1), elementwise:

    p(x | mu, b) = exp(-|logit(x) - mu| / b) / (2 b x (1 - x))
  """
  logit_x = jnp.log(x_BxHxWx3) - jnp.log1p(-x_BxHxWx3)
  return (math.log(2.0) + log_b_BxHxWx3 + jnp.log(x_BxHxWx3) + jnp.log1p(-x_BxHxWx3)
          + jnp.abs(logit_x - mu_BxHxWx3) * jnp.exp(-log_b_BxHxWx3))


def cosine_ramp(step: jax.Array | int, start: float, end: float, steps: int) -> jax.Array:
  """start at step 0 -> end at `steps` and after, along half a cosine."""
  if steps <= 0:
    return jnp.asarray(end, jnp.float32)
  frac = jnp.clip(jnp.asarray(step, jnp.float32) / steps, 0.0, 1.0)
  return end + (start - end) * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))


def temperature(loss: DVAELoss, step: jax.Array | int) -> jax.Array:
  """The gumbel-softmax temperature at `step`: temperature_start -> temperature_end."""
  return cosine_ramp(step, loss.temperature_start, loss.temperature_end,
                     loss.temperature_steps)


def kl_weight(loss: DVAELoss, step: jax.Array | int) -> jax.Array:
  """beta at `step`: 0 -> kl_weight over kl_warmup_steps."""
  return cosine_ramp(step, 0.0, loss.kl_weight, loss.kl_warmup_steps)


def gumbel_softmax(logits_BxhxwxK: jax.Array, rng: jax.Array, tau: jax.Array) -> jax.Array:
  """The relaxed one-hot sample softmax((logits + Gumbel noise) / tau) over the last axis."""
  gumbel = jax.random.gumbel(rng, logits_BxhxwxK.shape, logits_BxhxwxK.dtype)
  return jax.nn.softmax((logits_BxhxwxK + gumbel) / tau, axis=-1)


def kl_to_uniform(logits_BxhxwxK: jax.Array) -> jax.Array:
  """KL(softmax(logits) || uniform over K) of each cell, B x h x w, in nats."""
  log_q = jax.nn.log_softmax(logits_BxhxwxK, axis=-1)
  return jnp.sum(jnp.exp(log_q) * log_q, axis=-1) + math.log(logits_BxhxwxK.shape[-1])


def code_stats(ids_Bxhxw: jax.Array, codebook_size: int) -> dict[str, jax.Array]:
  """Fraction of codes used in the batch and perplexity of the code histogram."""
  counts_K = jnp.sum(jax.nn.one_hot(ids_Bxhxw.reshape(-1), codebook_size), axis=0)
  probs_K = counts_K / jnp.maximum(jnp.sum(counts_K), 1.0)
  entropy = -jnp.sum(jnp.where(probs_K > 0, probs_K * jnp.log(jnp.maximum(probs_K, 1e-12)), 0.0))
  return {"codebook_usage": jnp.mean(counts_K > 0), "perplexity": jnp.exp(entropy)}


def model_config(group: Any, spec: DataSpec) -> DVAEConfig:
  return schema.parse(DVAEConfig, group, "config.model", given={"image_size": spec.image_size},
                      skip=families.MODEL_SELECTORS)


def loss_config(group: Any, model_cfg: DVAEConfig) -> DVAELoss:
  del model_cfg
  return schema.parse(DVAELoss, group, "config.loss")


def init_variables(model: DVAEModel, rng: jax.Array, batch: families.Batch) -> dict[str, Any]:
  return model.init(rng, map_pixels(batch["image"]))


def loss_fn(params: dict[str, Any], batch: families.Batch, rng: jax.Array, *,
            model: DVAEModel, settings: DVAELoss, train: bool,
            step: jax.Array | int = 0) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The negative relaxed ELB per pixel dimension (module docstring); `rng` draws the gumbel
  noise. Logs nll (per dimension), kl (per cell), the schedules, psnr of the argmax codes'
  reconstruction, codebook usage and perplexity."""
  variables = {"params": params}
  x = map_pixels(batch["image"])
  logits = model.apply(variables, x, method=DVAEModel.logits)
  ids = jnp.argmax(logits, axis=-1)
  tau, beta = temperature(settings, step), kl_weight(settings, step)
  if train:
    z = gumbel_softmax(logits, rng, tau)
  else:
    z = jax.nn.one_hot(ids, model.cfg.codebook_size, dtype=logits.dtype)
  stats = model.apply(variables, z, method=DVAEModel.decode_relaxed)
  nll = logit_laplace_nll(x, stats[..., :3], stats[..., 3:])
  kl = kl_to_uniform(logits)
  dims = nll[0].size
  loss = jnp.mean(jnp.sum(nll, axis=(1, 2, 3)) + beta * jnp.sum(kl, axis=(1, 2))) / dims
  recon = stats_to_pixels(stats)
  x01 = jnp.asarray(batch["image"], jnp.float32) / 255.0
  metrics = {"loss": loss, "nll": jnp.mean(nll), "kl": jnp.mean(kl), "temperature": tau,
             "kl_weight": beta,
             "psnr": jnp.mean(image_metrics.psnr(recon, x01, data_range=1.0)),
             **code_stats(ids, model.cfg.codebook_size)}
  return loss, metrics


def encode_images(params: dict[str, Any], image_BxHxWx3: jax.Array, *,
                  model: DVAEModel) -> jax.Array:
  """uint8 images -> int32 argmax codes B x h x w."""
  return model.apply({"params": params}, map_pixels(image_BxHxWx3), method=DVAEModel.encode)


def decode_ids(params: dict[str, Any], ids_Bxhxw: jax.Array, *, model: DVAEModel) -> jax.Array:
  """int32 codes B x h x w -> uint8 images: the decoder of the one-hot codes."""
  return to_uint8(stats_to_pixels(model.apply({"params": params}, ids_Bxhxw,
                                              method=DVAEModel.decode_stats)))


def reconstruct(params: dict[str, Any], image_BxHxWx3: jax.Array, *,
                model: DVAEModel) -> jax.Array:
  """uint8 images -> uint8 reconstructions through the argmax codes."""
  return decode_ids(params, encode_images(params, image_BxHxWx3, model=model), model=model)


def preview(params: dict[str, Any], batch: families.Batch, rng: jax.Array, *,
            model: DVAEModel) -> jax.Array:
  """The preview grid's second row: reconstructions through the argmax codes."""
  del rng
  return reconstruct(params, batch["image"], model=model)


FAMILY = families.Family(
    name="dvae", reads=readers.IMAGE_FOLDER, model_config=model_config,
    loss_config=loss_config, make_model=DVAEModel, init_variables=init_variables,
    loss_fn=loss_fn, preview=preview,
    image_codec=families.ImageCodec(encode=encode_images, decode=decode_ids,
                                    params_keys=("encoder", "decoder")))
