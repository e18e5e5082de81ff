"""The VQGAN objective (config.loss), following taming-transformers' recipe; pure functions
that the family's `loss_fn` (models/vqgan.py) composes.

- Reconstruction L_rec: l1 + l2 pixel losses, plus the LPIPS-VGG distance weighted by
  `lpips_weight`. The network is `image_metrics.lpips`, the one `upgen eval recon --lpips`
  scores with. Its weights (`lpips_weights`, the safetensors file scripts/convert_lpips.py
  writes) are read when the family is built and held by `LossSettings` as constants that the
  loss closes over. They are not trained: they are not in params, the optimizer state or a
  checkpoint. A positive `lpips_weight` with no file logs one warning and trains without
  the term.
- Adversarial: the discriminator's hinge loss and the generator's -mean(D(recon)), both
  zero before `adversarial_start`. The generator loss is weighted by `adversarial_weight`
  (a fixed weight). With `adaptive_gan_weight` that weight is also multiplied by taming's
  adaptive lambda = ||dL_rec/dW|| / (||dL_gan/dW|| + 1e-4), clamped to [0, 1e4] and
  stop-gradient. W is the decoder's last kernel (`adaptive_weight`).
"""
from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import optax

from upgen import errors
from upgen.models import image_metrics

log = logging.getLogger("upgen.vqgan")

ADAPTIVE_EPS = 1e-4  # taming's ||grad L_gan|| + 1e-4.
ADAPTIVE_MAX = 1e4  # taming's clamp.


@dataclasses.dataclass(frozen=True)
class VQGANLoss:
  """config.loss: reconstruction, perceptual, quantizer and adversarial weights."""
  l1_weight: float = 1.0
  l2_weight: float = 1.0
  lpips_weight: float = 0.0  # LPIPS-VGG perceptual loss weight (taming: 1.0).
  lpips_weights: str = ""  # The LPIPS-VGG safetensors file (scripts/convert_lpips.py).
  commitment_cost: float = 0.25  # Beta of the commitment loss.
  codebook_revive_weight: float = 0.0  # Weight of the dead-code revival loss.
  adversarial_weight: float = 0.0  # Generator loss weight (needs config.model.discriminator).
  adversarial_start: int = 2000  # Optimizer step at which the adversarial terms turn on.
  adaptive_gan_weight: bool = False  # Scale the generator loss by taming's adaptive lambda.

  def __post_init__(self):
    for key in ("l1_weight", "l2_weight", "lpips_weight", "commitment_cost",
                "codebook_revive_weight", "adversarial_weight", "adversarial_start"):
      if getattr(self, key) < 0:
        raise errors.ConfigError(f"config.loss.{key}={getattr(self, key)}: must be >= 0")


@dataclasses.dataclass(frozen=True, eq=False)
class LossSettings:
  """What the family's loss_fn reads: config.loss, and the frozen LPIPS-VGG params
  (`image_metrics.load_lpips`'s layout) it closes over, read from the file when the loss is
  first traced: a run rebuilt to encode or decode (`upgen tokenize` on another host) needs
  no weights file. None means no perceptual term."""
  loss: VQGANLoss

  @functools.cached_property
  def lpips_params(self) -> Optional[dict[str, Any]]:
    return load_lpips_params(self.loss)


def load_lpips_params(loss: VQGANLoss) -> Optional[dict[str, Any]]:
  """The LPIPS-VGG params the loss needs: None when `lpips_weight` is 0, or (with a warning)
  when no file is given. A missing or malformed file is an error naming it."""
  if loss.lpips_weight == 0:
    return None
  if not loss.lpips_weights:
    log.warning("config.loss.lpips_weight=%g but config.loss.lpips_weights is empty: training "
                "WITHOUT the LPIPS term (scripts/convert_lpips.py writes the weights file)",
                loss.lpips_weight)
    return None
  try:
    return image_metrics.load_lpips(loss.lpips_weights)
  except errors.UserError as e:
    raise type(e)(f"config.loss.lpips_weights: {e}") from e


def loss_settings(loss: VQGANLoss, discriminator: bool) -> LossSettings:
  """Checks config.loss against the model (`discriminator`); the LPIPS params load later."""
  if not discriminator:
    for key in ("adversarial_weight", "adaptive_gan_weight"):
      if getattr(loss, key):
        raise errors.ConfigError(f"config.loss.{key}={getattr(loss, key)} needs a "
                                 "discriminator: set config.model.discriminator=True")
  return LossSettings(loss)


def reconstruction_loss(recon_BxHxWx3: jax.Array, x_BxHxWx3: jax.Array,
                        settings: LossSettings) -> tuple[jax.Array, dict[str, jax.Array]]:
  """L_rec = l1_weight |recon - x| + l2_weight (recon - x)^2 [+ lpips_weight LPIPS], batch
  means, with the unweighted terms as metrics (loss_l1, loss_l2, loss_lpips)."""
  w = settings.loss
  loss_l1 = jnp.mean(jnp.abs(recon_BxHxWx3 - x_BxHxWx3))
  loss_l2 = jnp.mean(jnp.square(recon_BxHxWx3 - x_BxHxWx3))
  loss = w.l1_weight * loss_l1 + w.l2_weight * loss_l2
  metrics = {"loss_l1": loss_l1, "loss_l2": loss_l2}
  if settings.lpips_params is not None:
    x_sg = jax.lax.stop_gradient(x_BxHxWx3)
    loss_lpips = jnp.mean(image_metrics.lpips(settings.lpips_params, recon_BxHxWx3, x_sg))
    loss = loss + w.lpips_weight * loss_lpips
    metrics["loss_lpips"] = loss_lpips
  return loss, metrics


def hinge_loss(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
  """The discriminator's hinge loss: mean relu(1 - real) + mean relu(1 + fake)."""
  return jnp.mean(jax.nn.relu(1.0 - real_logits)) + jnp.mean(jax.nn.relu(1.0 + fake_logits))


def adaptive_weight(rec_grad: Any, gan_grad: Any) -> jax.Array:
  """taming's lambda: ||rec_grad|| / (||gan_grad|| + 1e-4), clamped to [0, 1e4], as a
  constant (stop-gradient)."""
  ratio = optax.tree.norm(rec_grad) / (optax.tree.norm(gan_grad) + ADAPTIVE_EPS)
  return jax.lax.stop_gradient(jnp.clip(ratio, 0.0, ADAPTIVE_MAX))


def last_layer_grads(last_layer: Callable[[jax.Array], jax.Array], kernel: jax.Array,
                     *cotangents_BxHxWx3: jax.Array) -> list[jax.Array]:
  """Gradients w.r.t. `kernel` of losses whose gradients w.r.t. `last_layer(kernel)` (the
  reconstruction) are the cotangents: one VJP of the last layer, no pass through the rest
  of the network."""
  _, pull = jax.vjp(last_layer, kernel)
  return [pull(c)[0] for c in cotangents_BxHxWx3]


def with_cotangent(value: jax.Array, x: jax.Array, cotangent: jax.Array) -> jax.Array:
  """A scalar equal to `value` whose gradient w.r.t. `x` is `cotangent` (both taken as
  constants): lets a loss whose gradient w.r.t. `x` is already computed join the backward
  pass without a second backward through the networks behind it."""
  linear = jnp.sum(x * jax.lax.stop_gradient(cotangent))
  return jax.lax.stop_gradient(value) + (linear - jax.lax.stop_gradient(linear))
