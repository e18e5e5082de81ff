"""Gaussian diffusion on images in [-1, 1] (NHWC), in the form of improved DDPM (Nichol &
Dhariwal 2021, openai/improved-diffusion `gaussian_diffusion.py`) and GLIDE.

A `Process` holds one schedule's tables in float64 numpy (built once, outside jit); the
functions below gather them at int32 timestep indices as float32 constants, so they jit with
the process closed over. A respaced process (`process(..., keep=...)`) keeps a subset of the
base timesteps and recomputes its betas from the kept alphabar; its `timestep_map` says which
original t the model sees at each of its indices.

The model predicts epsilon. Its output has C channels for C image channels (fixed variance:
improved DDPM's FIXED_LARGE) or 2C ("learned range": the last C channels are v in [-1, 1],
log variance = frac log(beta_t) + (1 - frac) log(posterior variance), frac = (v + 1) / 2).

  loss "simple"  mean squared error on epsilon
  loss "hybrid"  simple + L_vlb in bits/dim on [stop_gradient(eps), v] (trains only the
                 variance channels), rescaled by T/1000 (RESCALED_MSE: lambda = 1e-3 on the
                 full sum over T terms)

Samplers: `ddpm_sample` (ancestral) and `ddim_sample` (eta = 0 deterministic), each a
`jax.lax.fori_loop` over the process's indices; `guide` mixes conditional and unconditional
outputs for classifier-free guidance.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from upgen import errors

SCHEDULES = ("linear", "cosine")
LOSS_TYPES = ("simple", "hybrid")
PREDICTIONS = ("epsilon", "v")  # What the model's first C output channels predict.
MAX_BETA = 0.999  # Cap on the cosine schedule's betas (the last one would be 1).
COSINE_OFFSET = 0.008  # s in alphabar(t) = cos^2((t/T + s) / (1 + s) * pi/2).

ModelFn = Callable[[jax.Array, jax.Array], jax.Array]


# ------------------------------------------------------------------------------ schedules


def betas_for(schedule: str, num_steps: int) -> np.ndarray:
  """The base process's betas, float64 of shape (num_steps,)."""
  if num_steps < 1:
    raise errors.ConfigError(f"diffusion steps {num_steps}: need at least 1")
  if schedule == "linear":
    scale = 1000.0 / num_steps  # Same curve for any T (improved DDPM's scaled linear).
    return np.linspace(scale * 1e-4, scale * 0.02, num_steps, dtype=np.float64)
  if schedule == "cosine":
    alphabar_T1 = cosine_alphabar(np.arange(num_steps + 1, dtype=np.float64) / num_steps)
    return np.minimum(1.0 - alphabar_T1[1:] / alphabar_T1[:-1], MAX_BETA)
  raise errors.ConfigError(f"noise schedule {schedule!r}: choose 'linear' or 'cosine'")


def cosine_alphabar(frac):
  """The cosine schedule's alphabar at t/T = `frac` (numpy, float64)."""
  return np.cos((np.asarray(frac, np.float64) + COSINE_OFFSET) / (1 + COSINE_OFFSET)
                * math.pi / 2) ** 2


def space_timesteps(num_steps: int, count: int) -> tuple[int, ...]:
  """`count` of the timesteps 0..num_steps-1, evenly strided with rounding (0 and
  num_steps - 1 kept when count >= 2): improved DDPM's `space_timesteps` for one section."""
  if not 1 <= count <= num_steps:
    raise errors.ConfigError(
        f"sampling steps {count}: choose between 1 and the {num_steps} diffusion steps")
  stride = 1.0 if count == 1 else (num_steps - 1) / (count - 1)
  kept, position = [], 0.0
  for _ in range(count):  # Accumulated as improved DDPM does, so the rounding agrees.
    kept.append(int(round(position)))
    position += stride
  return tuple(kept)


# ------------------------------------------------------------------------------ process


def _tables(betas: np.ndarray) -> dict[str, np.ndarray]:
  """The derived float64 tables of one process, named as in improved DDPM."""
  alphas = 1.0 - betas
  abar = np.cumprod(alphas)
  abar_prev = np.append(1.0, abar[:-1])
  posterior_variance = betas * (1.0 - abar_prev) / (1.0 - abar)
  # posterior_variance[0] is 0: the clipped log uses index 1's value there (the base
  # variance for a 1-step process, which has no index 1).
  first = posterior_variance[1] if len(betas) > 1 else betas[0]
  return {
      "alphas_cumprod": abar,
      "alphas_cumprod_prev": abar_prev,
      "alphas_cumprod_next": np.append(abar[1:], 0.0),
      "sqrt_alphas_cumprod": np.sqrt(abar),
      "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - abar),
      "log_one_minus_alphas_cumprod": np.log(1.0 - abar),
      "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / abar),
      "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / abar - 1.0),
      "posterior_variance": posterior_variance,
      "posterior_log_variance_clipped": np.log(np.append(first, posterior_variance[1:])),
      "posterior_mean_coef1": betas * np.sqrt(abar_prev) / (1.0 - abar),
      "posterior_mean_coef2": (1.0 - abar_prev) * np.sqrt(alphas) / (1.0 - abar),
      "log_betas": np.log(betas),
      # FIXED_LARGE: beta_t, with the posterior variance at t = 0 (beta_0 is too small).
      "fixed_log_variance": np.log(np.append(first, betas[1:])),
  }


_TABLE = dict(init=False, repr=False)


@dataclasses.dataclass(frozen=True, eq=False)
class Process:
  """float64 numpy tables of one (possibly respaced) process."""
  betas: np.ndarray
  timestep_map: Optional[np.ndarray] = None  # Original t at each index; arange if None.
  original_num_steps: Optional[int] = None  # The base T; len(betas) if None.
  alphas_cumprod: np.ndarray = dataclasses.field(**_TABLE)
  alphas_cumprod_prev: np.ndarray = dataclasses.field(**_TABLE)
  alphas_cumprod_next: np.ndarray = dataclasses.field(**_TABLE)
  sqrt_alphas_cumprod: np.ndarray = dataclasses.field(**_TABLE)
  sqrt_one_minus_alphas_cumprod: np.ndarray = dataclasses.field(**_TABLE)
  log_one_minus_alphas_cumprod: np.ndarray = dataclasses.field(**_TABLE)
  sqrt_recip_alphas_cumprod: np.ndarray = dataclasses.field(**_TABLE)
  sqrt_recipm1_alphas_cumprod: np.ndarray = dataclasses.field(**_TABLE)
  posterior_variance: np.ndarray = dataclasses.field(**_TABLE)
  posterior_log_variance_clipped: np.ndarray = dataclasses.field(**_TABLE)
  posterior_mean_coef1: np.ndarray = dataclasses.field(**_TABLE)
  posterior_mean_coef2: np.ndarray = dataclasses.field(**_TABLE)
  log_betas: np.ndarray = dataclasses.field(**_TABLE)
  fixed_log_variance: np.ndarray = dataclasses.field(**_TABLE)

  def __post_init__(self):
    betas = np.asarray(self.betas, np.float64)
    if betas.ndim != 1 or not len(betas) or not np.all((betas > 0) & (betas <= 1)):
      raise errors.ConfigError(f"betas of shape {betas.shape}: need a non-empty 1-D array "
                               "in (0, 1]")
    steps = (np.arange(len(betas)) if self.timestep_map is None
             else np.asarray(self.timestep_map, np.int64))
    if steps.shape != betas.shape:
      raise errors.ConfigError(f"timestep_map of shape {steps.shape} for {len(betas)} betas")
    object.__setattr__(self, "betas", betas)
    object.__setattr__(self, "timestep_map", steps)
    if self.original_num_steps is None:
      object.__setattr__(self, "original_num_steps", len(betas))
    for name, table in _tables(betas).items():
      object.__setattr__(self, name, table)

  @property
  def num_timesteps(self) -> int:
    return len(self.betas)


def process(schedule: str, num_steps: int, keep: Optional[Sequence[int]] = None) -> Process:
  """The base process of `num_steps`, or the one that keeps only timesteps `keep` of it."""
  base = Process(betas_for(schedule, num_steps))
  if keep is None:
    return base
  steps = np.unique(np.asarray(list(keep), np.int64))
  if not len(steps) or steps[0] < 0 or steps[-1] >= num_steps:
    raise errors.ConfigError(f"kept timesteps {list(keep)[:8]}...: need some of "
                             f"0..{num_steps - 1}")
  abar = base.alphas_cumprod[steps]
  betas = 1.0 - abar / np.append(1.0, abar[:-1])
  return Process(betas, timestep_map=steps, original_num_steps=num_steps)


# ------------------------------------------------------------------------------ q and p


def _at(table: np.ndarray, t_B: jax.Array, ndim: int) -> jax.Array:
  """table[t] as float32, shaped (B, 1, ...) to broadcast against a rank-`ndim` array."""
  values_B = jnp.asarray(table, jnp.float32)[t_B]
  return values_B.reshape(values_B.shape + (1,) * (ndim - 1))


def _f32(x) -> jax.Array:
  return jnp.asarray(x).astype(jnp.float32)


def q_sample(proc: Process, x0, t_B, noise) -> jax.Array:
  """x_t ~ q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I), given the noise."""
  x0, noise = _f32(x0), _f32(noise)
  return (_at(proc.sqrt_alphas_cumprod, t_B, x0.ndim) * x0
          + _at(proc.sqrt_one_minus_alphas_cumprod, t_B, x0.ndim) * noise)


def q_posterior(proc: Process, x0, xt, t_B) -> tuple[jax.Array, jax.Array, jax.Array]:
  """q(x_{t-1} | x_t, x_0): (mean, variance, clipped log variance), DDPM eq. 7."""
  x0, xt = _f32(x0), _f32(xt)
  mean = (_at(proc.posterior_mean_coef1, t_B, xt.ndim) * x0
          + _at(proc.posterior_mean_coef2, t_B, xt.ndim) * xt)
  variance = jnp.broadcast_to(_at(proc.posterior_variance, t_B, xt.ndim), xt.shape)
  log_variance = jnp.broadcast_to(_at(proc.posterior_log_variance_clipped, t_B, xt.ndim),
                                  xt.shape)
  return mean, variance, log_variance


def x0_from_eps(proc: Process, xt, t_B, eps) -> jax.Array:
  return (_at(proc.sqrt_recip_alphas_cumprod, t_B, xt.ndim) * xt
          - _at(proc.sqrt_recipm1_alphas_cumprod, t_B, xt.ndim) * eps)


def eps_from_x0(proc: Process, xt, t_B, x0) -> jax.Array:
  return ((_at(proc.sqrt_recip_alphas_cumprod, t_B, xt.ndim) * xt - x0)
          / _at(proc.sqrt_recipm1_alphas_cumprod, t_B, xt.ndim))


def v_target(proc: Process, x0, t_B, noise) -> jax.Array:
  """The velocity v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0 (Salimans & Ho 2022)."""
  x0 = _f32(x0)
  return (_at(proc.sqrt_alphas_cumprod, t_B, x0.ndim) * _f32(noise)
          - _at(proc.sqrt_one_minus_alphas_cumprod, t_B, x0.ndim) * x0)


def min_snr_weights(proc: Process, gamma: float, prediction: str) -> np.ndarray:
  """Min-SNR-gamma loss weights per timestep (Hang et al. 2023; float64, T): the MSE of the
  prediction rescaled so that its x_0 error counts min(SNR_t, gamma) times, where epsilon's
  counts SNR_t times and v's SNR_t + 1. It caps the low-noise steps, which hold most of the
  loss but little of the layout."""
  abar = np.asarray(proc.alphas_cumprod, np.float64)
  snr = abar / (1.0 - abar)
  own = snr if check_prediction(prediction) == "epsilon" else snr + 1.0
  return np.minimum(snr, gamma) / own


def check_prediction(prediction: str) -> str:
  if prediction not in PREDICTIONS:
    raise errors.ConfigError(f"config.model.prediction={prediction!r}: choose one of "
                             f"{PREDICTIONS}")
  return prediction


def as_epsilon(proc: Process, out_BxHxWxC, xt, t_B, prediction: str) -> jax.Array:
  """The model output with its first C channels turned into epsilon (the form everything
  below reads): `prediction` "epsilon" as it is, "v" by eps = sqrt(abar) v +
  sqrt(1 - abar) x_t; the variance channels, if any, unchanged. `t_B` indexes `proc`."""
  if check_prediction(prediction) == "epsilon":
    return out_BxHxWxC
  xt = _f32(xt)
  c = xt.shape[-1]
  out = _f32(out_BxHxWxC)
  eps = (_at(proc.sqrt_alphas_cumprod, t_B, xt.ndim) * out[..., :c]
         + _at(proc.sqrt_one_minus_alphas_cumprod, t_B, xt.ndim) * xt)
  return jnp.concatenate([eps, out[..., c:]], axis=-1)


def split_output(out_BxHxWxC, image_channels: int) -> tuple[jax.Array, Optional[jax.Array]]:
  """(eps, v or None) from a model output of `image_channels` or twice as many channels."""
  channels = out_BxHxWxC.shape[-1]
  if channels == image_channels:
    return out_BxHxWxC, None
  if channels == 2 * image_channels:
    return out_BxHxWxC[..., :image_channels], out_BxHxWxC[..., image_channels:]
  raise ValueError(f"model output has {channels} channels: need {image_channels} (epsilon) "
                   f"or {2 * image_channels} (epsilon and variance) for "
                   f"{image_channels}-channel images")


def p_mean_variance(proc: Process, out_BxHxWxC, xt, t_B, *, clip_denoised: bool = True
                    ) -> dict[str, jax.Array]:
  """p(x_{t-1} | x_t) from the model output: mean, log_variance, pred_x0 and eps (float32)."""
  xt = _f32(xt)
  eps, v = split_output(_f32(out_BxHxWxC), xt.shape[-1])
  if v is None:
    log_variance = jnp.broadcast_to(_at(proc.fixed_log_variance, t_B, xt.ndim), xt.shape)
  else:
    frac = (v + 1.0) / 2.0
    log_variance = (frac * _at(proc.log_betas, t_B, xt.ndim)
                    + (1.0 - frac) * _at(proc.posterior_log_variance_clipped, t_B, xt.ndim))
  pred_x0 = x0_from_eps(proc, xt, t_B, eps)
  if clip_denoised:
    pred_x0 = jnp.clip(pred_x0, -1.0, 1.0)
  mean, _, _ = q_posterior(proc, pred_x0, xt, t_B)
  return {"mean": mean, "log_variance": log_variance, "pred_x0": pred_x0, "eps": eps}


# ------------------------------------------------------------------------------ likelihoods


def normal_kl(mean1, logvar1, mean2, logvar2) -> jax.Array:
  """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) elementwise, in nats."""
  return 0.5 * (-1.0 + logvar2 - logvar1 + jnp.exp(logvar1 - logvar2)
                + (mean1 - mean2) ** 2 * jnp.exp(-logvar2))


def approx_standard_normal_cdf(x) -> jax.Array:
  """The tanh approximation of the standard normal CDF that improved DDPM uses."""
  return 0.5 * (1.0 + jnp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def discretized_gaussian_log_likelihood(x, means, log_scales) -> jax.Array:
  """log P(x) elementwise for x on the 256 levels of [-1, 1]: the Gaussian's mass over the
  bin of width 2/255 around x, the two edge bins open to -inf and +inf."""
  centered = _f32(x) - means
  inv_std = jnp.exp(-log_scales)
  cdf_plus = approx_standard_normal_cdf(inv_std * (centered + 1.0 / 255.0))
  cdf_min = approx_standard_normal_cdf(inv_std * (centered - 1.0 / 255.0))
  log_cdf_plus = jnp.log(jnp.maximum(cdf_plus, 1e-12))
  log_one_minus_cdf_min = jnp.log(jnp.maximum(1.0 - cdf_min, 1e-12))
  log_delta = jnp.log(jnp.maximum(cdf_plus - cdf_min, 1e-12))
  return jnp.where(x < -0.999, log_cdf_plus,
                   jnp.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def _mean_over_example(x_BxD) -> jax.Array:
  return jnp.mean(x_BxD.reshape(x_BxD.shape[0], -1), axis=1)


def vlb_bits_per_dim(proc: Process, out_BxHxWxC, x0, xt, t_B, *, clip_denoised: bool = False
                     ) -> jax.Array:
  """The variational bound's term at t per example (float32, B), bits per dimension:
  KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) for t >= 1, the decoder NLL at t = 0."""
  x0 = _f32(x0)
  true_mean, _, true_log_var = q_posterior(proc, x0, xt, t_B)
  p = p_mean_variance(proc, out_BxHxWxC, xt, t_B, clip_denoised=clip_denoised)
  kl_B = _mean_over_example(normal_kl(true_mean, true_log_var, p["mean"], p["log_variance"]))
  nll_B = -_mean_over_example(
      discretized_gaussian_log_likelihood(x0, p["mean"], 0.5 * p["log_variance"]))
  return jnp.where(jnp.asarray(t_B) == 0, nll_B, kl_B) / math.log(2.0)


def check_loss_type(loss_type: str) -> str:
  if loss_type not in LOSS_TYPES:
    raise errors.ConfigError(
        f"config.loss.loss_type={loss_type!r}: choose one of {LOSS_TYPES}")
  return loss_type


def training_losses(proc: Process, out_BxHxWxC, x0, xt, t_B, noise, *, loss_type: str,
                    prediction: str = "epsilon", min_snr_gamma: float = 0.0
                    ) -> dict[str, jax.Array]:
  """Per-example float32 losses (B): "loss" and "mse" (of the predicted quantity:
  epsilon, or v; unweighted), and for "hybrid" "vb" (the rescaled bound term that trains the
  variance channels) and "vlb_bpd" (the unscaled term). min_snr_gamma > 0 weights the MSE
  in "loss" by min_snr_weights."""
  check_loss_type(loss_type)
  out = _f32(out_BxHxWxC)
  pred, v = split_output(out, jnp.shape(x0)[-1])
  target = _f32(noise) if check_prediction(prediction) == "epsilon" else v_target(
      proc, x0, t_B, noise)
  mse_B = _mean_over_example((target - pred) ** 2)
  weighted_B = mse_B
  if min_snr_gamma > 0:
    weighted_B = mse_B * _at(min_snr_weights(proc, min_snr_gamma, prediction), t_B, 1)
  if loss_type == "simple":
    return {"loss": weighted_B, "mse": mse_B}
  if v is None:
    raise errors.ConfigError(
        f"config.loss.loss_type='hybrid' learns the variance: the model must output "
        f"{2 * out.shape[-1]} channels (epsilon and v), not {out.shape[-1]}")
  eps = as_epsilon(proc, out, xt, t_B, prediction)[..., :pred.shape[-1]]
  frozen = jnp.concatenate([jax.lax.stop_gradient(eps), v], axis=-1)
  vlb_B = vlb_bits_per_dim(proc, frozen, x0, xt, t_B, clip_denoised=False)
  vb_B = vlb_B * (proc.original_num_steps / 1000.0)
  return {"loss": weighted_B + vb_B, "mse": mse_B, "vb": vb_B, "vlb_bpd": vlb_B}


# ------------------------------------------------------------------------------ sampling


def guide(out_cond, out_uncond, scale, *, image_channels: int = 3) -> jax.Array:
  """Classifier-free guidance on epsilon, (1 + g) eps_cond - g eps_uncond (g = 0: the
  conditional model; GLIDE's s is g + 1); variance channels from the conditional output."""
  eps = ((1.0 + scale) * out_cond[..., :image_channels]
         - scale * out_uncond[..., :image_channels])
  return jnp.concatenate([eps.astype(out_cond.dtype), out_cond[..., image_channels:]], axis=-1)


def _start(shape, rng, x_T) -> tuple[jax.Array, jax.Array]:
  """(x_T, the key that each step's noise folds its index into)."""
  start_key, step_key = jax.random.split(rng)
  if x_T is None:
    return jax.random.normal(start_key, tuple(shape), jnp.float32), step_key
  if tuple(jnp.shape(x_T)) != tuple(shape):
    raise ValueError(f"x_T of shape {jnp.shape(x_T)} for samples of shape {tuple(shape)}")
  return _f32(x_T), step_key


def _reverse_loop(proc: Process, step_fn, x_T) -> jax.Array:
  """Runs x <- step_fn(i, t_B, x) for i = N-1 .. 0 (t_B: i for every example)."""
  n = proc.num_timesteps

  def body(k, x):
    i = n - 1 - k
    return step_fn(i, jnp.full((x.shape[0],), i, jnp.int32), x)

  return jax.lax.fori_loop(0, n, body, x_T)


def ddpm_sample(proc: Process, model_fn: ModelFn, shape, rng, *, clip_denoised: bool = True,
                x_T=None) -> jax.Array:
  """Ancestral sampling: x_{t-1} = mean + exp(log_var / 2) z (no noise at index 0).
  `model_fn(x_BxHxWxC, t_B)` sees the original timesteps (proc.timestep_map)."""
  x, step_key = _start(shape, rng, x_T)
  timestep_map = jnp.asarray(proc.timestep_map, jnp.int32)

  def step(i, t_B, x):
    p = p_mean_variance(proc, model_fn(x, timestep_map[t_B]), x, t_B,
                        clip_denoised=clip_denoised)
    z = jax.random.normal(jax.random.fold_in(step_key, i), x.shape, jnp.float32)
    return p["mean"] + jnp.where(i > 0, 1.0, 0.0) * jnp.exp(0.5 * p["log_variance"]) * z

  return _reverse_loop(proc, step, x)


def ddim_sample(proc: Process, model_fn: ModelFn, shape, rng, *, eta: float = 0.0,
                clip_denoised: bool = True, x_T=None) -> jax.Array:
  """DDIM: eps re-derived from the (clipped) pred_x0; x_{t-1} = sqrt(abar_prev) x0 +
  sqrt(1 - abar_prev - sigma^2) eps + sigma z, sigma = eta sqrt(posterior variance) (no
  noise at index 0); eta = 0 is deterministic given x_T, eta = 1 is DDPM's posterior."""
  x, step_key = _start(shape, rng, x_T)
  timestep_map = jnp.asarray(proc.timestep_map, jnp.int32)
  # sqrt((1 - abar_prev) / (1 - abar)) sqrt(1 - abar / abar_prev) is the posterior std.
  sigma_unit = np.sqrt((1.0 - proc.alphas_cumprod_prev) / (1.0 - proc.alphas_cumprod)
                       * (1.0 - proc.alphas_cumprod / proc.alphas_cumprod_prev))

  def step(i, t_B, x):
    p = p_mean_variance(proc, model_fn(x, timestep_map[t_B]), x, t_B,
                        clip_denoised=clip_denoised)
    eps = eps_from_x0(proc, x, t_B, p["pred_x0"])
    sigma = eta * _at(sigma_unit, t_B, x.ndim)
    abar_prev = _at(proc.alphas_cumprod_prev, t_B, x.ndim)
    direction = jnp.sqrt(jnp.maximum(_at(1.0 - proc.alphas_cumprod_prev, t_B, x.ndim)
                                     - sigma ** 2, 0.0))
    z = jax.random.normal(jax.random.fold_in(step_key, i), x.shape, jnp.float32)
    return (jnp.sqrt(abar_prev) * p["pred_x0"] + direction * eps
            + jnp.where(i > 0, 1.0, 0.0) * sigma * z)

  return _reverse_loop(proc, step, x)
