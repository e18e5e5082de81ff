"""GLIDE: text-conditional diffusion in pixels, trained by the same trainer on pixel records
(`upgen tokenize --pixels`), sampled with classifier-free guidance.

The network is upgen/models/glide_unet.py (an ADM UNet with GLIDE's text transformer); the
diffusion process, losses and samplers are upgen/sampling/diffusion.py (improved DDPM's numerics).

Training (`loss_fn`): images scaled to [-1, 1]; t uniform over the T steps; x_t by the
forward process; the caption replaced by the empty one (every position the learned padding
embedding) for a `config.loss.caption_dropout` fraction of examples (GLIDE: 20%), the
unconditional model of guidance. `config.loss.loss_type`: "simple" (the epsilon MSE) or
"hybrid" (improved DDPM's: the MSE plus the variational bound in bits per dimension, scaled
by T / 1000, seen by the variance channels only). Examples without an image take no part.
Metrics: the loss, its terms, and the epsilon MSE in each quarter of [0, T) (where the
model learns, and where it does not).

Sampling (`config.sample`): "ddpm" (ancestral, all T steps or respaced to `num_steps`) or
"ddim" (with `eta`), classifier-free guidance on epsilon: (1 + g) eps(x | caption) -
g eps(x | empty), g = `guidance_scale` (0 = the conditional model; GLIDE's scale s is
g = s - 1), both halves in one batch. Samplers return uint8 pixels.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from upgen import errors
from upgen import families
from upgen import flops
from upgen import schema
from upgen.data import readers
from upgen.data.spec import DataSpec
from upgen.families import Batch
from upgen.families import Family
from upgen.models import glide_unet
from upgen.models import layers
from upgen.models.glide_unet import GlideUNet
from upgen.models.glide_unet import UNetConfig
from upgen.sampling import diffusion

KEY = "config.sample"


def model_config(group: Any, spec: DataSpec) -> UNetConfig:
  return schema.parse(UNetConfig, group, "config.model",
                      given=spec.pixel_sizes("a GLIDE diffusion model"),
                      skip=families.MODEL_SELECTORS)


@dataclasses.dataclass(frozen=True)
class GlideLoss:
  """config.loss."""
  loss_type: str = "hybrid"  # "simple" (epsilon MSE) or "hybrid" (+ T/1000 x L_vlb).
  caption_dropout: float = 0.2  # Fraction of examples trained with the empty caption.
  # How a batch's timesteps are drawn: "uniform" (each independently) or "stratified" (one
  # uniform offset, example i at (offset + i / B) mod 1 of the T steps: the batch covers every
  # stretch of t, so the loss estimate varies less from batch to batch; VDM's low-discrepancy
  # sampler). Either way each example's t is uniform over the T steps.
  timesteps: str = "uniform"
  # Min-SNR-gamma weighting of the MSE over t (0 = off, the prediction's own weighting):
  # the x_0 error counts min(SNR_t, gamma) times (diffusion.min_snr_weights).
  min_snr_gamma: float = 0.0

  def __post_init__(self):
    if self.min_snr_gamma < 0:
      raise errors.ConfigError(f"config.loss.min_snr_gamma={self.min_snr_gamma}: must be >= 0 "
                               "(0 = off)")
    if self.timesteps not in ("uniform", "stratified"):
      raise errors.ConfigError(f"config.loss.timesteps={self.timesteps!r}: choose 'uniform' "
                               "or 'stratified'")
    if self.loss_type not in ("simple", "hybrid"):
      raise errors.ConfigError(f"config.loss.loss_type={self.loss_type!r}: choose 'simple' "
                               "or 'hybrid'")
    if not 0.0 <= self.caption_dropout <= 1.0:
      raise errors.ConfigError(f"config.loss.caption_dropout={self.caption_dropout}: must be "
                               "in [0, 1]")


def loss_config(group: Any, model_cfg: UNetConfig) -> GlideLoss:
  settings = schema.parse(GlideLoss, group, "config.loss")
  if settings.loss_type == "hybrid" and not model_cfg.learn_sigma:
    raise errors.ConfigError("config.loss.loss_type='hybrid' trains the learned variance; "
                             "set config.model.learn_sigma=True or use 'simple'")
  return settings


SAMPLERS = ("ddim", "ddpm")


@dataclasses.dataclass(frozen=True)
class GlideSample:
  """config.sample (hashable: a static argument of the jitted samplers)."""
  sampler: str = "ddpm"  # "ddpm" (ancestral) or "ddim".
  num_steps: int = 50  # Respaced steps (0 = all of the model's T).
  eta: float = 0.0  # DDIM's noise (0 = deterministic given x_T; 1 = DDPM-like).
  guidance_scale: float = 2.0  # (1 + g) cond - g uncond on epsilon; 0 = conditional only.
  clip_denoised: bool = True  # Clip each step's predicted x_0 to [-1, 1].
  per_prompt: int = 4  # Samples per prompt in `upgen sample`.

  def __post_init__(self):
    if self.sampler not in SAMPLERS:
      raise errors.ConfigError(f"{KEY}.sampler={self.sampler!r}: choose 'ddim' or 'ddpm'")
    if self.num_steps < 0:
      raise errors.ConfigError(f"{KEY}.num_steps={self.num_steps}: must be >= 0 (0 = all)")
    if self.eta < 0 or self.guidance_scale < 0:
      raise errors.ConfigError(f"{KEY}.eta={self.eta}, {KEY}.guidance_scale="
                               f"{self.guidance_scale}: both must be >= 0")
    if self.per_prompt < 1:
      raise errors.ConfigError(f"{KEY}.per_prompt={self.per_prompt}: must be >= 1")


def sample_config(group: Any) -> GlideSample:
  return schema.parse(GlideSample, group, KEY)


def base_process(cfg: UNetConfig) -> diffusion.Process:
  return diffusion.process(cfg.noise_schedule, cfg.diffusion_steps)


def sampling_process(cfg: UNetConfig, settings: GlideSample) -> diffusion.Process:
  steps = settings.num_steps or cfg.diffusion_steps
  if steps > cfg.diffusion_steps:
    raise errors.ConfigError(f"{KEY}.num_steps={steps} > the model's "
                             f"{cfg.diffusion_steps} diffusion steps")
  return diffusion.process(cfg.noise_schedule, cfg.diffusion_steps,
                           diffusion.space_timesteps(cfg.diffusion_steps, steps))


def to_unit(pixels_BxHxWx3: jax.Array) -> jax.Array:
  """uint8 [0, 255] -> float32 [-1, 1]."""
  return jnp.asarray(pixels_BxHxWx3, jnp.float32) / 127.5 - 1.0


def to_pixels(x_BxHxWx3: jax.Array) -> jax.Array:
  """[-1, 1] -> uint8, rounded as guided-diffusion saves samples."""
  return jnp.clip(jnp.round((x_BxHxWx3 + 1.0) * 127.5), 0, 255).astype(jnp.uint8)


def sample_timesteps(rng: jax.Array, b: int, num_timesteps: int, how: str) -> jax.Array:
  """(b,) int32 timesteps in [0, num_timesteps), each uniform (GlideLoss.timesteps)."""
  if how == "uniform":
    return jax.random.randint(rng, (b,), 0, num_timesteps)
  u_B = (jax.random.uniform(rng, ()) + jnp.arange(b, dtype=jnp.float32) / b) % 1.0
  return jnp.minimum((u_B * num_timesteps).astype(jnp.int32), num_timesteps - 1)


def loss_fn(params, batch: Batch, rng: jax.Array, *, model: GlideUNet, settings: GlideLoss,
            train: bool, step=None):
  """The diffusion loss of one batch -> (loss, metrics)."""
  del step
  cfg = model.config
  proc = base_process(cfg)
  x0 = to_unit(batch["pixels"])
  b = x0.shape[0]
  t_rng, noise_rng, drop_rng, dropout_rng = jax.random.split(rng, 4)
  t_B = sample_timesteps(t_rng, b, proc.num_timesteps, settings.timesteps)
  noise = jax.random.normal(noise_rng, x0.shape, jnp.float32)
  xt = diffusion.q_sample(proc, x0, t_B, noise)
  has_text_B = jnp.asarray(batch["has_text"], bool)
  keep_B = has_text_B & (jax.random.uniform(drop_rng, (b,)) >= settings.caption_dropout)
  valid = jnp.asarray(batch["text_mask"], bool) & keep_B[:, None]
  out = model.apply({"params": params}, xt, t_B,
                    batch["text_tokens"], valid, train=train, rngs={"dropout": dropout_rng})
  terms = diffusion.training_losses(proc, out, x0, xt, t_B, noise, loss_type=settings.loss_type,
                                    prediction=cfg.prediction,
                                    min_snr_gamma=settings.min_snr_gamma)
  weight_B = jnp.asarray(batch["has_image"], bool).astype(jnp.float32)
  n = jnp.maximum(jnp.sum(weight_B), 1.0)
  mean = lambda x_B: jnp.sum(weight_B * x_B) / n
  metrics = {k: mean(v) for k, v in terms.items()}
  quarter_B = (t_B * 4) // proc.num_timesteps
  for q in range(4):
    w = weight_B * (quarter_B == q)
    metrics[f"mse_q{q}"] = jnp.sum(w * terms["mse"]) / jnp.maximum(jnp.sum(w), 1.0)
  return metrics["loss"], metrics


def image_features(params, pixels_BxHxWx3, *, model: GlideUNet) -> list[jax.Array]:
  """`upgen eval probe`: per residual block of the UNet (down, middle, up, in call order),
  its output averaged over the spatial positions, B x C each, for the images lightly noised
  to t = T / 10 (fixed noise: the same call gives the same features) with the empty caption
  (every position the learned padding), so no label reaches the network from the text."""
  cfg = model.config
  proc = base_process(cfg)
  x0 = to_unit(pixels_BxHxWx3)
  b = x0.shape[0]
  t_B = jnp.full((b,), proc.num_timesteps // 10, jnp.int32)
  xt = diffusion.q_sample(proc, x0, t_B, jax.random.normal(jax.random.key(0), x0.shape))
  empty_Bx1 = jnp.zeros((b, 1), jnp.int32)
  blocks = layers.module_outputs(model, params, xt, t_B, empty_Bx1,
                                 jnp.zeros_like(empty_Bx1, bool), train=False,
                                 of=glide_unet.ResBlock)
  return [jnp.mean(h.astype(jnp.float32), axis=(1, 2)) for h in blocks.values()]


def init_variables(model: GlideUNet, rng: jax.Array, batch: Batch) -> dict[str, Any]:
  b = batch["pixels"].shape[0]
  return model.init({"params": rng}, to_unit(batch["pixels"]), jnp.zeros((b,), jnp.int32),
                    jnp.asarray(batch["text_tokens"], jnp.int32),
                    jnp.asarray(batch["text_mask"], bool), train=False)


def _guided_model(params, model: GlideUNet, text_BxLt, valid_BxLt, guidance_scale: float):
  """model_fn(x, t) of the samplers, t the original timestep: the output as epsilon (and
  variance), conditional and unconditional halves in one batch when guided."""
  cfg = model.config
  base = base_process(cfg)
  eps = lambda out, x, t_B: diffusion.as_epsilon(base, out, x, t_B, cfg.prediction)

  def model_fn(x, t_B):
    if not guidance_scale:
      return eps(model.apply({"params": params}, x, t_B, text_BxLt, valid_BxLt), x, t_B)
    both = model.apply({"params": params}, jnp.concatenate([x, x]), jnp.concatenate([t_B, t_B]),
                       jnp.concatenate([text_BxLt, text_BxLt]),
                       jnp.concatenate([valid_BxLt, jnp.zeros_like(valid_BxLt)]))
    cond, uncond = jnp.split(eps(both, jnp.concatenate([x, x]), jnp.concatenate([t_B, t_B])), 2)
    return diffusion.guide(cond, uncond, guidance_scale)

  return model_fn


def _sample(params, text_BxLt, valid_BxLt, rng, *, model: GlideUNet, settings: GlideSample):
  cfg = model.config
  proc = sampling_process(cfg, settings)
  shape = (text_BxLt.shape[0], cfg.image_size, cfg.image_size, 3)
  model_fn = _guided_model(params, model, jnp.asarray(text_BxLt, jnp.int32),
                           jnp.asarray(valid_BxLt, bool), settings.guidance_scale)
  if settings.sampler == "ddpm":
    x0 = diffusion.ddpm_sample(proc, model_fn, shape, rng, clip_denoised=settings.clip_denoised)
  else:
    x0 = diffusion.ddim_sample(proc, model_fn, shape, rng, eta=settings.eta,
                               clip_denoised=settings.clip_denoised)
  return to_pixels(x0)


def sample_images(params, text_BxLt, text_mask_BxLt, rng, *, model: GlideUNet,
                  settings: GlideSample) -> jax.Array:
  """Captions -> uint8 images BxSxSx3."""
  return _sample(params, text_BxLt, text_mask_BxLt, rng, model=model, settings=settings)


def unconditional_images(params, rng, *, model: GlideUNet, settings: GlideSample,
                         num: int) -> jax.Array:
  """`num` images from the empty caption (guidance has nothing to push against: off)."""
  cfg = model.config
  text = jnp.full((num, cfg.text_seq_len), cfg.text_pad_id, jnp.int32)
  return _sample(params, text, jnp.zeros(text.shape, bool), rng, model=model,
                 settings=dataclasses.replace(settings, guidance_scale=0.0))


def image_nll(params, batch: Batch, *, model: GlideUNet) -> jax.Array:
  """-log p(image | caption) in nats by the variational bound over all T steps (the prior
  term, a KL per step, the discretized decoder at t = 0): bits per dimension is this over
  (3 x H x W x ln 2). T model calls per batch."""
  cfg = model.config
  proc = base_process(cfg)
  x0 = to_unit(batch["pixels"])
  b = x0.shape[0]
  valid = jnp.asarray(batch["text_mask"], bool) & jnp.asarray(batch["has_text"], bool)[:, None]
  rng = jax.random.key(0)
  dims = float(np.prod(x0.shape[1:]))

  def body(t, total_B):
    t_B = jnp.full((b,), t, jnp.int32)
    noise = jax.random.normal(jax.random.fold_in(rng, t), x0.shape)
    xt = diffusion.q_sample(proc, x0, t_B, noise)
    out = diffusion.as_epsilon(proc, model.apply({"params": params}, xt, t_B,
                                                 batch["text_tokens"], valid),
                               xt, t_B, cfg.prediction)
    return total_B + diffusion.vlb_bits_per_dim(proc, out, x0, xt, t_B) * dims * np.log(2.0)

  total_B = jax.lax.fori_loop(0, proc.num_timesteps, body, jnp.zeros((b,), jnp.float32))
  abar_T = float(proc.alphas_cumprod[-1])
  prior = diffusion.normal_kl(np.sqrt(abar_T) * x0, np.log(1.0 - abar_T), 0.0, 0.0)
  return total_B + jnp.sum(prior, axis=(1, 2, 3))


def train_flops(cfg: UNetConfig) -> flops.FlopCount:
  """3 x the forward pass of glide_unet.forward_flops (backward = 2 x forward)."""
  return flops.FlopCount(tuple((name, 3.0 * f, f"3 x forward ({formula})" if formula
                                else "3 x forward")
                               for name, f, formula in glide_unet.forward_flops(cfg)))


def sample_cost(cfg: UNetConfig, settings: GlideSample, batch_size: int,
                param_bytes: int) -> families.SampleCost:
  steps = settings.num_steps or cfg.diffusion_steps
  calls = 2 if settings.guidance_scale else 1
  forward = sum(f for _, f, _ in glide_unet.forward_flops(cfg))
  return families.SampleCost(
      flops=steps * calls * batch_size * forward, bytes=float(steps * param_bytes),
      note=f"{steps} steps x {calls} passes x {batch_size} images x {forward:.3g} FLOPs; "
           f"parameters read once per step")


PARAM_GROUPS = {
    "text": ("text", "text_proj"),
    "unet": ("time_embed_.*", "input_blocks_.*", "middle_.*", "output_blocks_.*", "out_.*"),
}

FAMILY = Family(
    name="glide", reads=readers.PIXEL_RECORDS, model_config=model_config,
    loss_config=loss_config, make_model=GlideUNet, init_variables=init_variables,
    loss_fn=loss_fn, sample_config=sample_config, sample_images=sample_images,
    unconditional_images=unconditional_images, image_nll=image_nll,
    image_features=image_features, train_flops=train_flops, sample_cost=sample_cost,
    param_groups=PARAM_GROUPS)
