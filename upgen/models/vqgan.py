"""VQGAN image tokenizer family: model, loss and the `FAMILY` record for the trainer.

Parameters are one tree `{"vqgan": autoencoder, "disc": discriminator}` ("disc" only with
`config.model.discriminator`). One optimizer and one backward pass train both: the
generator's adversarial term sees stop_gradient(disc params) and the discriminator's hinge
term sees stop_gradient(reconstructions), so each loss term only moves its own parameters.

The adversarial terms switch on at optimizer step `config.loss.adversarial_start` (the
trainer passes `step` to the loss).
"""
from __future__ import annotations

import dataclasses
from typing import Any

from flax import linen as nn
import jax
import jax.numpy as jnp

from upgen import errors
from upgen import families
from upgen import flops
from upgen import schema
from upgen.data import readers
from upgen.data.spec import DataSpec
from upgen.models import image_metrics
from upgen.models import vqgan_layers as layers
from upgen.models.vqgan_layers import VQGANConfig


class VQGAN(nn.Module):
  """The autoencoder: encoder, vector quantizer, decoder."""
  cfg: VQGANConfig

  def setup(self):
    self.encoder = layers.Encoder(self.cfg)
    self.quantizer = layers.VectorQuantizer(self.cfg)
    self.decoder = layers.Decoder(self.cfg)

  def __call__(self, x_BxHxWx3: jax.Array) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """Pixels in [-1, 1] -> (reconstruction, ids_Bxhxw, quantizer stats)."""
    quantized, ids_Bxhxw, stats = self.quantizer(self.encoder(x_BxHxWx3))
    return self.decoder(quantized), ids_Bxhxw, stats

  def encode(self, x_BxHxWx3: jax.Array) -> jax.Array:
    return self.quantizer.nearest(self.encoder(x_BxHxWx3))

  def decode(self, ids_Bxhxw: jax.Array) -> jax.Array:
    return self.decoder(self.quantizer.lookup(ids_Bxhxw))


class VQGANModel(nn.Module):
  """Top-level module of the family: params {"vqgan": ..., "disc": ...}."""
  cfg: VQGANConfig

  def setup(self):
    self.vqgan = VQGAN(self.cfg)
    if self.cfg.discriminator:
      self.disc = layers.Discriminator(self.cfg)

  def __call__(self, x_BxHxWx3: jax.Array) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    out = self.vqgan(x_BxHxWx3)
    if self.cfg.discriminator:
      self.disc(x_BxHxWx3)  # Creates the discriminator's params at init.
    return out

  def autoencode(self, x_BxHxWx3: jax.Array) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    return self.vqgan(x_BxHxWx3)

  def encode(self, x_BxHxWx3: jax.Array) -> jax.Array:
    return self.vqgan.encode(x_BxHxWx3)

  def decode(self, ids_Bxhxw: jax.Array) -> jax.Array:
    return self.vqgan.decode(ids_Bxhxw)

  def discriminate(self, x_BxHxWx3: jax.Array) -> jax.Array:
    return self.disc(x_BxHxWx3)


def to_unit(image_BxHxWx3: jax.Array) -> jax.Array:
  """uint8 pixels -> float32 in [-1, 1]."""
  return jnp.asarray(image_BxHxWx3, jnp.float32) / 127.5 - 1.0


def to_uint8(x_BxHxWx3: jax.Array) -> jax.Array:
  """float pixels (clipped to [-1, 1]) -> uint8."""
  return jnp.round((jnp.clip(x_BxHxWx3, -1.0, 1.0) + 1.0) * 127.5).astype(jnp.uint8)


def model_config(group: Any, spec: DataSpec) -> VQGANConfig:
  return schema.parse(VQGANConfig, group, "config.model", given={"image_size": spec.image_size},
                      skip=families.MODEL_SELECTORS)


@dataclasses.dataclass(frozen=True)
class VQGANLoss:
  """config.loss: reconstruction, quantizer and adversarial weights."""
  l1_weight: float = 1.0
  l2_weight: float = 1.0
  commitment_cost: float = 0.25  # Beta of the commitment loss.
  codebook_revive_weight: float = 0.0  # Weight of the dead-code revival loss.
  adversarial_weight: float = 0.0  # Generator loss weight (needs config.model.discriminator).
  adversarial_start: int = 2000  # Optimizer step at which the adversarial terms turn on.

  def __post_init__(self):
    for key in ("l1_weight", "l2_weight", "commitment_cost", "codebook_revive_weight",
                "adversarial_weight", "adversarial_start"):
      if getattr(self, key) < 0:
        raise errors.ConfigError(f"config.loss.{key}={getattr(self, key)}: must be >= 0")


def loss_config(group: Any, model_cfg: VQGANConfig) -> VQGANLoss:
  loss = schema.parse(VQGANLoss, group, "config.loss")
  if loss.adversarial_weight > 0 and not model_cfg.discriminator:
    raise errors.ConfigError(f"config.loss.adversarial_weight={loss.adversarial_weight} needs a "
                             "discriminator: set config.model.discriminator=True")
  return loss


def init_variables(model: VQGANModel, rng: jax.Array, batch: families.Batch) -> dict[str, Any]:
  return model.init(rng, to_unit(batch["image"]))


def adversarial_losses(params: dict[str, Any], x_BxHxWx3: jax.Array, recon_BxHxWx3: jax.Array,
                        model: VQGANModel) -> tuple[jax.Array, jax.Array]:
  """(generator loss, discriminator hinge loss) with the stop-gradient split."""
  disc_sg = {"params": {"disc": jax.lax.stop_gradient(params["disc"])}}
  disc = {"params": {"disc": params["disc"]}}
  fake_logits = model.apply(disc_sg, recon_BxHxWx3, method=VQGANModel.discriminate)
  generator_loss = -jnp.mean(fake_logits)
  both = jnp.concatenate([x_BxHxWx3, jax.lax.stop_gradient(recon_BxHxWx3)], axis=0)
  logits = model.apply(disc, both, method=VQGANModel.discriminate)
  real_logits, fake_logits = jnp.split(logits, 2, axis=0)
  disc_loss = jnp.mean(nn.relu(1.0 - real_logits)) + jnp.mean(nn.relu(1.0 + fake_logits))
  return generator_loss, disc_loss


def psnr(x_BxHxWx3: jax.Array, y_BxHxWx3: jax.Array) -> jax.Array:
  """Mean PSNR (dB) of images in [-1, 1] (peak-to-peak 2)."""
  return jnp.mean(image_metrics.psnr(x_BxHxWx3, y_BxHxWx3, data_range=2.0))


def code_stats(counts_K: jax.Array) -> dict[str, jax.Array]:
  """Fraction of codes used and perplexity of the code histogram."""
  probs_K = counts_K / jnp.maximum(jnp.sum(counts_K), 1.0)
  entropy = -jnp.sum(jnp.where(probs_K > 0, probs_K * jnp.log(jnp.maximum(probs_K, 1e-12)), 0.0))
  return {"codebook_usage": jnp.mean(counts_K > 0), "perplexity": jnp.exp(entropy)}


def loss_fn(params: dict[str, Any], batch: families.Batch, rng: jax.Array, *,
            model: VQGANModel, settings: VQGANLoss, train: bool,
            step: jax.Array | int = 0) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Reconstruction (l1 + l2) + codebook/commitment/revival (+ adversarial after the start
  step), weighted by `settings` (config.loss)."""
  del rng, train  # Deterministic model: no dropout, no sampling.
  x = to_unit(batch["image"])
  recon, _, stats = model.apply({"params": {"vqgan": params["vqgan"]}}, x,
                                method=VQGANModel.autoencode)
  loss_l1 = jnp.mean(jnp.abs(recon - x))
  loss_l2 = jnp.mean(jnp.square(recon - x))
  loss_vq = (stats["codebook"] + settings.commitment_cost * stats["commitment"]
             + settings.codebook_revive_weight * stats["revive"])
  loss = settings.l1_weight * loss_l1 + settings.l2_weight * loss_l2 + loss_vq
  metrics = {"loss_l1": loss_l1, "loss_l2": loss_l2, "loss_vq": loss_vq,
             "psnr": psnr(jnp.clip(recon, -1.0, 1.0), x), **code_stats(stats["code_counts"])}
  if min(x.shape[1:3]) >= len(image_metrics.gaussian_taps()):
    unit = lambda a: (jnp.clip(a, -1.0, 1.0) + 1.0) / 2.0  # SSIM is taken on [0, 1] pixels.
    metrics["ssim"] = jnp.mean(image_metrics.ssim(unit(recon), unit(x), 1.0))
  if model.cfg.discriminator:
    active = jnp.asarray(step) >= settings.adversarial_start
    generator_loss, disc_loss = jax.lax.cond(
        active, lambda: adversarial_losses(params, x, recon, model),
        lambda: (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32)))
    loss = loss + settings.adversarial_weight * generator_loss + disc_loss
    metrics.update(loss_gen=generator_loss, loss_disc=disc_loss,
                   adversarial_active=active.astype(jnp.float32))
  metrics["loss"] = loss
  return loss, metrics


def reconstruct(params: dict[str, Any], image_BxHxWx3: jax.Array, *,
                model: VQGANModel) -> jax.Array:
  """uint8 images -> uint8 reconstructions through the codebook."""
  variables = {"params": {"vqgan": params["vqgan"]}}
  ids_Bxhxw = model.apply(variables, to_unit(image_BxHxWx3), method=VQGANModel.encode)
  return to_uint8(model.apply(variables, ids_Bxhxw, method=VQGANModel.decode))


def preview(params: dict[str, Any], batch: families.Batch, rng: jax.Array, *,
            model: VQGANModel) -> jax.Array:
  """The preview grid's second row: reconstructions through the codebook."""
  del rng
  return reconstruct(params, batch["image"], model=model)


def train_flops(cfg: VQGANConfig) -> flops.FlopCount:
  """Forward + backward (3x forward) FLOPs of the autoencoder, discriminator excluded."""
  return flops.FlopCount((("convolutions", 3.0 * layers.autoencoder_flops(cfg),
                           f"3 x forward conv FLOPs at {cfg.image_size}px"),))


FAMILY = families.Family(
    name="vqgan", reads=readers.IMAGE_FOLDER, model_config=model_config,
    loss_config=loss_config, make_model=VQGANModel, init_variables=init_variables,
    loss_fn=loss_fn, preview=preview, train_flops=train_flops)
