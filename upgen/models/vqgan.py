"""VQGAN image tokenizer family: model, loss and the `FAMILY` record for the trainer.

Parameters are one tree `{"vqgan": autoencoder, "disc": discriminator}` ("disc" only with
`config.model.discriminator`). One optimizer and one backward pass train both: the
generator's adversarial term sees stop_gradient(disc params) and the discriminator's hinge
term sees stop_gradient(reconstructions), so each loss term only moves its own parameters.

The adversarial terms switch on at optimizer step `config.loss.adversarial_start` (the
trainer passes `step` to the loss), at a fixed weight (`fixed_weight_objective`) or at
taming's adaptive weight (`adaptive_weight_objective`, config.loss.adaptive_gan_weight).
The reconstruction loss can add LPIPS-VGG (config.loss.lpips_weight / lpips_weights); its
frozen params are loaded by `loss_config` and live in the loss settings, not in params
(models/vqgan_loss.py).
"""
from __future__ import annotations

from typing import Any

from flax import linen as nn
import jax
import jax.numpy as jnp

from upgen import families
from upgen import flops
from upgen import schema
from upgen.data import readers
from upgen.data.spec import DataSpec
from upgen.models import image_metrics
from upgen.models import vqgan_layers as layers
from upgen.models import vqgan_loss
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

  def with_features(self, x_BxHxWx3: jax.Array
                    ) -> tuple[jax.Array, jax.Array, jax.Array, dict[str, jax.Array]]:
    """(reconstruction, the decoder's last-layer input, ids_Bxhxw, quantizer stats)."""
    quantized, ids_Bxhxw, stats = self.quantizer(self.encoder(x_BxHxWx3))
    recon, features = self.decoder(quantized, with_features=True)
    return recon, features, ids_Bxhxw, stats

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

  def autoencode_with_features(self, x_BxHxWx3: jax.Array
                               ) -> tuple[jax.Array, jax.Array, jax.Array, dict[str, jax.Array]]:
    return self.vqgan.with_features(x_BxHxWx3)

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


def loss_config(group: Any, model_cfg: VQGANConfig) -> vqgan_loss.LossSettings:
  """config.loss, checked against the model, with the LPIPS params it names loaded."""
  loss = schema.parse(vqgan_loss.VQGANLoss, group, "config.loss")
  return vqgan_loss.loss_settings(loss, model_cfg.discriminator)


def init_variables(model: VQGANModel, rng: jax.Array, batch: families.Batch) -> dict[str, Any]:
  return model.init(rng, to_unit(batch["image"]))


def generator_loss(params: dict[str, Any], recon_BxHxWx3: jax.Array,
                   model: VQGANModel) -> jax.Array:
  """-mean D(recon) with the discriminator's params held constant."""
  disc_sg = {"params": {"disc": jax.lax.stop_gradient(params["disc"])}}
  return -jnp.mean(model.apply(disc_sg, recon_BxHxWx3, method=VQGANModel.discriminate))


def discriminator_loss(params: dict[str, Any], x_BxHxWx3: jax.Array, recon_BxHxWx3: jax.Array,
                       model: VQGANModel) -> jax.Array:
  """The hinge loss on real images and stop_gradient(reconstructions)."""
  both = jnp.concatenate([x_BxHxWx3, jax.lax.stop_gradient(recon_BxHxWx3)], axis=0)
  logits = model.apply({"params": {"disc": params["disc"]}}, both,
                       method=VQGANModel.discriminate)
  return vqgan_loss.hinge_loss(*jnp.split(logits, 2, axis=0))


def adversarial_losses(params: dict[str, Any], x_BxHxWx3: jax.Array, recon_BxHxWx3: jax.Array,
                       model: VQGANModel) -> tuple[jax.Array, jax.Array]:
  """(generator loss, discriminator hinge loss) with the stop-gradient split."""
  return (generator_loss(params, recon_BxHxWx3, model),
          discriminator_loss(params, x_BxHxWx3, recon_BxHxWx3, model))


def psnr(x_BxHxWx3: jax.Array, y_BxHxWx3: jax.Array) -> jax.Array:
  """Mean PSNR (dB) of images in [-1, 1] (peak-to-peak 2)."""
  return jnp.mean(image_metrics.psnr(x_BxHxWx3, y_BxHxWx3, data_range=2.0))


def code_stats(counts_K: jax.Array) -> dict[str, jax.Array]:
  """Fraction of codes used and perplexity of the code histogram."""
  probs_K = counts_K / jnp.maximum(jnp.sum(counts_K), 1.0)
  entropy = -jnp.sum(jnp.where(probs_K > 0, probs_K * jnp.log(jnp.maximum(probs_K, 1e-12)), 0.0))
  return {"codebook_usage": jnp.mean(counts_K > 0), "perplexity": jnp.exp(entropy)}


def fixed_weight_objective(params: dict[str, Any], x_BxHxWx3: jax.Array,
                           recon_BxHxWx3: jax.Array, features: jax.Array, *,
                           model: VQGANModel, settings: vqgan_loss.LossSettings,
                           active: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
  """L_rec (+ adversarial_weight x generator loss + discriminator loss once `active`)."""
  del features
  w = settings.loss
  loss, metrics = vqgan_loss.reconstruction_loss(recon_BxHxWx3, x_BxHxWx3, settings)
  if model.cfg.discriminator:
    zero = jnp.zeros((), jnp.float32)
    loss_gen, loss_disc = jax.lax.cond(
        active, lambda: adversarial_losses(params, x_BxHxWx3, recon_BxHxWx3, model),
        lambda: (zero, zero))
    loss = loss + w.adversarial_weight * loss_gen + loss_disc
    metrics.update(loss_gen=loss_gen, loss_disc=loss_disc,
                   gan_weight=w.adversarial_weight * active.astype(jnp.float32))
  return loss, metrics


def adaptive_weight_objective(params: dict[str, Any], x_BxHxWx3: jax.Array,
                              recon_BxHxWx3: jax.Array, features: jax.Array, *,
                              model: VQGANModel, settings: vqgan_loss.LossSettings,
                              active: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
  """L_rec + adversarial_weight x lambda x generator loss + discriminator loss, the last two
  once `active` (taming's adaptive weight; vqgan_loss's docstring).

  The gradients of L_rec and of the generator loss w.r.t. the reconstruction are taken
  once each (one backward through LPIPS, one through the discriminator); lambda comes from
  them by a VJP of the decoder's last layer alone, and their weighted sum enters the
  autoencoder's backward pass through `with_cotangent`.
  """
  w = settings.loss
  recon = jax.lax.stop_gradient(recon_BxHxWx3)
  features = jax.lax.stop_gradient(features)
  head = jax.lax.stop_gradient(params["vqgan"]["decoder"]["conv_out"])
  last_layer = lambda kernel: layers.output_conv(model.cfg).apply(
      {"params": {"kernel": kernel, "bias": head["bias"]}}, features).astype(jnp.float32)
  (loss_rec, metrics), grad_rec = jax.value_and_grad(
      vqgan_loss.reconstruction_loss, has_aux=True)(recon, x_BxHxWx3, settings)

  def gan_on():
    loss_gen, grad_gen = jax.value_and_grad(generator_loss, argnums=1)(params, recon, model)
    lam = vqgan_loss.adaptive_weight(*vqgan_loss.last_layer_grads(
        last_layer, head["kernel"], grad_rec, grad_gen))
    return loss_gen, grad_gen, lam

  zero = jnp.zeros((), jnp.float32)
  loss_gen, grad_gen, lam = jax.lax.cond(
      active, gan_on, lambda: (zero, jnp.zeros_like(recon), zero))
  gan_weight = w.adversarial_weight * lam
  loss = vqgan_loss.with_cotangent(loss_rec + gan_weight * loss_gen, recon_BxHxWx3,
                                   grad_rec + gan_weight * grad_gen)
  loss_disc = jax.lax.cond(
      active, lambda: discriminator_loss(params, x_BxHxWx3, recon_BxHxWx3, model),
      lambda: zero)
  metrics.update(loss_gen=loss_gen, loss_disc=loss_disc, gan_weight=gan_weight,
                 adaptive_weight=lam)
  return loss + loss_disc, metrics


def loss_fn(params: dict[str, Any], batch: families.Batch, rng: jax.Array, *,
            model: VQGANModel, settings: vqgan_loss.LossSettings, train: bool,
            step: jax.Array | int = 0) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Reconstruction (l1 + l2 [+ LPIPS]) + codebook/commitment/revival (+ adversarial after
  the start step, at a fixed or adaptive weight), weighted by `settings` (config.loss)."""
  del rng, train  # Deterministic model: no dropout, no sampling.
  w = settings.loss
  x = to_unit(batch["image"])
  recon, features, _, stats = model.apply({"params": {"vqgan": params["vqgan"]}}, x,
                                          method=VQGANModel.autoencode_with_features)
  objective = (adaptive_weight_objective if model.cfg.discriminator and w.adaptive_gan_weight
               else fixed_weight_objective)
  active = jnp.asarray(step) >= w.adversarial_start
  loss_ae, metrics = objective(params, x, recon, features, model=model, settings=settings,
                               active=active)
  loss_vq = (stats["codebook"] + w.commitment_cost * stats["commitment"]
             + w.codebook_revive_weight * stats["revive"])
  loss = loss_ae + loss_vq
  metrics.update(loss_vq=loss_vq, psnr=psnr(jnp.clip(recon, -1.0, 1.0), x),
                 **code_stats(stats["code_counts"]))
  if min(x.shape[1:3]) >= len(image_metrics.gaussian_taps()):
    unit = lambda a: (jnp.clip(a, -1.0, 1.0) + 1.0) / 2.0  # SSIM is taken on [0, 1] pixels.
    metrics["ssim"] = jnp.mean(image_metrics.ssim(unit(recon), unit(x), 1.0))
  if model.cfg.discriminator:
    metrics["adversarial_active"] = active.astype(jnp.float32)
  metrics["loss"] = loss
  return loss, metrics


def encode_images(params: dict[str, Any], image_BxHxWx3: jax.Array, *,
                  model: VQGANModel) -> jax.Array:
  """uint8 images -> int32 ids B x h x w (params: {"vqgan": ...}; the image tokenizer)."""
  return model.apply({"params": params}, to_unit(image_BxHxWx3), method=VQGANModel.encode)


def decode_ids(params: dict[str, Any], ids_Bxhxw: jax.Array, *, model: VQGANModel) -> jax.Array:
  """int32 ids B x h x w -> uint8 images (params: {"vqgan": ...}; the image tokenizer)."""
  return to_uint8(model.apply({"params": params}, ids_Bxhxw, method=VQGANModel.decode))


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
    loss_fn=loss_fn, preview=preview, train_flops=train_flops,
    image_codec=families.ImageCodec(encode=encode_images, decode=decode_ids,
                                    params_keys=("vqgan",)))
