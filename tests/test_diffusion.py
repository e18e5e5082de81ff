"""Gaussian diffusion (sampling/diffusion.py) against the closed forms of DDPM / improved DDPM:
schedules, respacing, q and the posterior, the bound's terms, the hybrid loss's gradients and
rescale, guidance, and the two samplers on models whose right answer is known."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from upgen.sampling import diffusion
from upgen import errors

SHAPE = (2, 8, 8, 3)


def _abar(schedule, num_steps):
  return np.cumprod(1.0 - diffusion.betas_for(schedule, num_steps))


def _oracle(x0, schedule="linear", num_steps=1000):
  """A model that knows x0: eps = (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t), t original."""
  abar = jnp.asarray(_abar(schedule, num_steps), jnp.float32)

  def model_fn(x, t_B):
    a = abar[t_B][:, None, None, None]
    return (x - jnp.sqrt(a) * x0) / jnp.sqrt(1.0 - a)
  return model_fn


def _some_model(channels=3):
  """An arbitrary smooth model of (x, t), the same for every call."""
  w = jnp.asarray(np.random.default_rng(7).normal(size=(3, channels)), jnp.float32)

  def model_fn(x, t_B):
    return jnp.tanh(x @ w + (t_B / 1000.0)[:, None, None, None])
  return model_fn


def test_linear_and_cosine_betas():
  linear = diffusion.betas_for("linear", 1000)
  assert linear.dtype == np.float64 and linear.shape == (1000,)
  assert linear[0] == pytest.approx(1e-4) and linear[-1] == pytest.approx(0.02)
  # Scaled with T: at T = 4000 the same curve in 4x the steps (betas a quarter).
  np.testing.assert_allclose(diffusion.betas_for("linear", 4000)[[0, -1]], [2.5e-5, 5e-3])
  for num_steps in (100, 1000):
    betas = diffusion.betas_for("cosine", num_steps)
    assert betas.dtype == np.float64 and betas.shape == (num_steps,)
    assert np.all(betas > 0) and np.all(betas <= 0.999) and betas[-1] == 0.999  # Capped.
    abar = np.cumprod(1.0 - betas)
    assert np.all(np.diff(abar) < 0)
    f = lambda t: math.cos((t / num_steps + 0.008) / 1.008 * math.pi / 2) ** 2
    for t in (0, 1, num_steps // 4, num_steps // 2, num_steps - 2):  # Uncapped steps.
      assert abar[t] == pytest.approx(f(t + 1) / f(0), rel=1e-10)


def test_space_timesteps():
  kept = diffusion.space_timesteps(1000, 50)
  assert len(kept) == 50 and kept[0] == 0 and kept[-1] == 999
  assert set(np.diff(kept)) <= {20, 21}  # 999 / 49 = 20.39, rounded.
  assert diffusion.space_timesteps(10, 4) == (0, 3, 6, 9)
  assert diffusion.space_timesteps(1000, 4) == (0, 333, 666, 999)
  assert diffusion.space_timesteps(100, 8) == (0, 14, 28, 42, 57, 71, 85, 99)  # Rounded.
  assert diffusion.space_timesteps(10, 10) == tuple(range(10))
  assert diffusion.space_timesteps(100, 1) == (0,)


def test_respaced_process_keeps_the_base_alphabar():
  base = diffusion.process("cosine", 1000)
  keep = diffusion.space_timesteps(1000, 50)
  spaced = diffusion.process("cosine", 1000, keep)
  assert spaced.num_timesteps == 50 and spaced.original_num_steps == 1000
  np.testing.assert_array_equal(spaced.timestep_map, keep)
  np.testing.assert_array_equal(base.timestep_map, np.arange(1000))
  np.testing.assert_allclose(spaced.alphas_cumprod, base.alphas_cumprod[list(keep)],
                             rtol=1e-10)
  assert spaced.betas[0] == pytest.approx(base.betas[0])  # alphabar_prev = 1 at the first.
  assert np.all(spaced.betas[1:] > base.betas[list(keep)][1:])  # Bigger steps.


def test_q_sample_marginal():
  proc = diffusion.process("linear", 1000)
  abar = _abar("linear", 1000)
  x0 = jnp.full((4096, 1, 1, 16), 0.7)
  t_B = jnp.full((4096,), 300)
  noise = jax.random.normal(jax.random.key(0), x0.shape)
  xt = np.asarray(diffusion.q_sample(proc, x0, t_B, noise), np.float64)
  # Exact algebra with the noise given, then the statistics of the draw.
  np.testing.assert_allclose(xt, math.sqrt(abar[300]) * 0.7 + math.sqrt(1 - abar[300])
                             * np.asarray(noise), atol=1e-6)
  assert xt.mean() == pytest.approx(math.sqrt(abar[300]) * 0.7, abs=0.01)
  assert xt.var() == pytest.approx(1 - abar[300], rel=0.03)


def _posterior_reference(betas, t, x0, xt):
  """DDPM eq. 7 in float64: posterior mean, variance and clipped log variance at t."""
  abar = np.cumprod(1.0 - betas)
  abar_prev = 1.0 if t == 0 else abar[t - 1]
  mean = (math.sqrt(abar_prev) * betas[t] / (1 - abar[t]) * x0
          + math.sqrt(1 - betas[t]) * (1 - abar_prev) / (1 - abar[t]) * xt)
  variance = (1 - abar_prev) / (1 - abar[t]) * betas[t]
  variance_1 = (1 - abar[0]) / (1 - abar[1]) * betas[1]
  return mean, variance, math.log(variance_1 if t == 0 else variance)


def test_q_posterior_and_p_mean_variance_match_ddpm_formulas():
  betas = diffusion.betas_for("cosine", 200)
  abar = np.cumprod(1.0 - betas)
  proc = diffusion.process("cosine", 200)
  rng = np.random.default_rng(0)
  x0 = rng.uniform(-1, 1, size=(1, 4, 4, 3))
  xt = rng.normal(size=(1, 4, 4, 3))
  out6 = rng.normal(size=(1, 4, 4, 6)) * np.array([1, 1, 1, 0.5, 0.5, 0.5])
  for t in (0, 1, 17, 150, 199):
    t_B = jnp.array([t])
    mean, variance, log_variance = diffusion.q_posterior(proc, x0, xt, t_B)
    ref_mean, ref_var, ref_log_var = _posterior_reference(betas, t, x0, xt)
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(variance, np.full(xt.shape, ref_var), rtol=1e-5)
    np.testing.assert_allclose(log_variance, np.full(xt.shape, ref_log_var), rtol=1e-5)
    eps, v = out6[..., :3], out6[..., 3:]
    for clip in (True, False):
      pred_x0 = (xt - math.sqrt(1 - abar[t]) * eps) / math.sqrt(abar[t])
      pred_x0 = np.clip(pred_x0, -1, 1) if clip else pred_x0
      want_mean = _posterior_reference(betas, t, pred_x0, xt)[0]
      fixed = diffusion.p_mean_variance(proc, out6[..., :3], xt, t_B, clip_denoised=clip)
      learned = diffusion.p_mean_variance(proc, out6, xt, t_B, clip_denoised=clip)
      for p in (fixed, learned):
        np.testing.assert_allclose(p["pred_x0"], pred_x0, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(p["mean"], want_mean, rtol=1e-4, atol=1e-4)
      # Fixed: beta_t (FIXED_LARGE), the posterior variance at t = 0.
      fixed_log_var = math.log(betas[t]) if t else ref_log_var
      np.testing.assert_allclose(fixed["log_variance"], np.full(xt.shape, fixed_log_var),
                                 rtol=1e-5)
      frac = (v + 1) / 2
      np.testing.assert_allclose(learned["log_variance"],
                                 frac * math.log(betas[t]) + (1 - frac) * ref_log_var,
                                 rtol=1e-5, atol=1e-6)
  big_t = diffusion.p_mean_variance(proc, out6, xt, jnp.array([199]))
  assert np.abs(big_t["pred_x0"]).max() == 1.0  # The clip was exercised.


def _true_posterior_output(proc, x0, noise, v):
  return jnp.concatenate([noise, jnp.full(noise.shape, v, noise.dtype)], axis=-1)


def test_kl_term_vanishes_at_the_true_posterior():
  proc = diffusion.process("linear", 1000)
  k0, k1 = jax.random.split(jax.random.key(1))
  x0 = jax.random.uniform(k0, (4,) + SHAPE[1:], minval=-1, maxval=1)
  noise = jax.random.normal(k1, x0.shape)
  t_B = jnp.array([1, 10, 500, 999])
  xt = diffusion.q_sample(proc, x0, t_B, noise)
  # eps = the true noise: the true posterior mean; v = -1: the (clipped) posterior variance.
  exact = diffusion.vlb_bits_per_dim(proc, _true_posterior_output(proc, x0, noise, -1.0),
                                     x0, xt, t_B)
  assert exact.dtype == jnp.float32 and exact.shape == (4,)
  np.testing.assert_allclose(exact, 0.0, atol=1e-6)
  wide = diffusion.vlb_bits_per_dim(proc, _true_posterior_output(proc, x0, noise, 1.0),
                                    x0, xt, t_B)
  off = diffusion.vlb_bits_per_dim(
      proc, _true_posterior_output(proc, x0, noise + 0.1, -1.0), x0, xt, t_B)
  # (At large t beta_t and the posterior variance nearly agree: v matters at small t.)
  assert np.all(np.asarray(wide)[:2] > 1e-3) and np.all(np.asarray(off) > 5e-5)


def test_decoder_nll_at_t0_is_the_bin_mass():
  proc = diffusion.process("linear", 1000)
  levels = np.linspace(-1, 1, 256)
  x0 = jnp.asarray(levels[np.random.default_rng(2).integers(0, 256, (1, 8, 8, 3))])
  x0 = x0.at[0, 0, 0].set(jnp.array([-1.0, 1.0, 0.0]))  # Both open edge bins.
  noise = jax.random.normal(jax.random.key(2), x0.shape)
  t_B = jnp.array([0])
  xt = diffusion.q_sample(proc, x0, t_B, noise)
  bpd = diffusion.vlb_bits_per_dim(proc, _true_posterior_output(proc, x0, noise, -1.0),
                                   x0, xt, t_B)
  # Mean at t = 0 is x0 itself; std sqrt(posterior_variance[1]); exact Gaussian bin mass.
  s = math.sqrt(_posterior_reference(diffusion.betas_for("linear", 1000), 1, 0, 0)[1])
  phi = lambda z: 0.5 * (1 + math.erf(z / math.sqrt(2)))
  interior = -math.log2(phi(1 / 255 / s) - phi(-1 / 255 / s))
  edge = -math.log2(phi(1 / 255 / s))
  n_edge = int(np.sum(np.abs(np.asarray(x0)) > 0.999))
  want = (n_edge * edge + (x0.size - n_edge) * interior) / x0.size
  assert float(bpd[0]) == pytest.approx(want, rel=2e-3)


def test_discretized_likelihood_sums_to_one():
  x = jnp.asarray(2 * np.arange(256) / 255 - 1, jnp.float32)
  for mean in (-1.3, -0.5, 0.0, 0.37, 1.0):
    for scale in (0.002, 0.05, 0.5, 3.0):
      log_p = diffusion.discretized_gaussian_log_likelihood(
          x, jnp.float32(mean), jnp.float32(math.log(scale)))
      assert float(jnp.sum(jnp.exp(log_p))) == pytest.approx(1.0, abs=1e-4)
  # An interior bin holds (about: tanh CDF) the Gaussian's mass over its 2/255 width.
  log_p = diffusion.discretized_gaussian_log_likelihood(jnp.float32(0.0), jnp.float32(0.01),
                                                        jnp.float32(math.log(0.02)))
  phi = lambda z: 0.5 * (1 + math.erf(z / math.sqrt(2)))
  want = phi((1 / 255 - 0.01) / 0.02) - phi((-1 / 255 - 0.01) / 0.02)
  assert math.exp(float(log_p)) == pytest.approx(want, rel=2e-3)


def _hybrid_inputs(proc, seed=3, t=(0, 700)):
  k0, k1, k2 = jax.random.split(jax.random.key(seed), 3)
  x0 = jax.random.uniform(k0, SHAPE, minval=-1, maxval=1)
  noise = jax.random.normal(k1, SHAPE)
  t_B = jnp.array(t)
  out = 0.5 * jax.random.normal(k2, SHAPE[:3] + (6,))
  return out, x0, diffusion.q_sample(proc, x0, t_B, noise), t_B, noise


def test_vb_gradient_reaches_only_the_variance_channels():
  proc = diffusion.process("cosine", 1000)
  out, x0, xt, t_B, noise = _hybrid_inputs(proc)

  def grad_of(term):
    return jax.grad(lambda o: jnp.sum(diffusion.training_losses(
        proc, o, x0, xt, t_B, noise, loss_type="hybrid")[term]))(out)

  vb_grad, mse_grad = np.asarray(grad_of("vb")), np.asarray(grad_of("mse"))
  for example in range(2):  # t = 0 (decoder NLL) and t = 700 (KL).
    assert np.all(vb_grad[example, ..., :3] == 0)
    assert np.abs(vb_grad[example, ..., 3:]).max() > 0
    assert np.abs(mse_grad[example, ..., :3]).max() > 0
    assert np.all(mse_grad[example, ..., 3:] == 0)
  # Control: the bound itself does depend on the eps channels; the stop-gradient cuts it.
  unfrozen = jax.grad(lambda o: jnp.sum(diffusion.vlb_bits_per_dim(proc, o, x0, xt, t_B)))(out)
  assert np.abs(np.asarray(unfrozen)[1, ..., :3]).max() > 0


def test_hybrid_loss_rescales_vb_by_t_over_1000():
  for num_steps, factor in ((1000, 1.0), (4000, 4.0)):
    proc = diffusion.process("linear", num_steps)
    out, x0, xt, t_B, noise = _hybrid_inputs(proc, t=(3, 600))
    losses = diffusion.training_losses(proc, out.astype(jnp.bfloat16), x0, xt, t_B, noise,
                                       loss_type="hybrid")
    assert all(v.dtype == jnp.float32 and v.shape == (2,) for v in losses.values())
    np.testing.assert_allclose(losses["vb"], factor * np.asarray(losses["vlb_bpd"]),
                               rtol=1e-6)
    np.testing.assert_allclose(losses["loss"], np.asarray(losses["mse"]) + losses["vb"],
                               rtol=1e-6)
    bf16_eps = np.asarray(out.astype(jnp.bfloat16)[..., :3], np.float32)
    np.testing.assert_allclose(
        losses["mse"], np.mean((np.asarray(noise) - bf16_eps) ** 2, axis=(1, 2, 3)),
        rtol=1e-5)
    simple = diffusion.training_losses(proc, out[..., :3], x0, xt, t_B, noise,
                                       loss_type="simple")
    assert set(simple) == {"loss", "mse"}
    np.testing.assert_array_equal(simple["loss"], simple["mse"])


def test_guide():
  rng = np.random.default_rng(4)
  cond, uncond = rng.normal(size=(2,) + SHAPE[:3] + (6,)).astype(np.float32)
  np.testing.assert_array_equal(diffusion.guide(cond, uncond, 0.0), cond)
  np.testing.assert_array_equal(diffusion.guide(cond[..., :3], uncond[..., :3], 0.0),
                                cond[..., :3])
  guided = np.asarray(diffusion.guide(cond, uncond, 2.0))
  np.testing.assert_allclose(guided[..., :3], 3 * cond[..., :3] - 2 * uncond[..., :3],
                             rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(guided[..., 3:], cond[..., 3:])


def test_ddim_eta0_is_deterministic_given_x_T():
  proc = diffusion.process("linear", 1000, diffusion.space_timesteps(1000, 10))
  x_T = jax.random.normal(jax.random.key(5), SHAPE)
  model_fn = _some_model()
  sample = jax.jit(lambda rng, eta: diffusion.ddim_sample(proc, model_fn, SHAPE, rng,
                                                          eta=eta, x_T=x_T))
  a, b = jax.random.key(10), jax.random.key(11)
  np.testing.assert_array_equal(sample(a, 0.0), sample(b, 0.0))
  assert np.abs(np.asarray(sample(a, 1.0)) - np.asarray(sample(b, 1.0))).max() > 1e-2
  # Without x_T the start is drawn from rng.
  free = diffusion.ddim_sample(proc, model_fn, SHAPE, a)
  assert free.shape == SHAPE and np.abs(np.asarray(free) - np.asarray(sample(a, 0.0))).max() > 0


def test_ddim_eta1_is_ddpm_with_the_posterior_variance():
  # eta = 1: sigma^2 is the posterior variance and the mean is the posterior mean (DDIM
  # paper), so DDIM matches DDPM with v = -1 step for step (same noise per index).
  proc = diffusion.process("cosine", 1000, diffusion.space_timesteps(1000, 20))
  model_fn = _some_model()
  ddpm_fn = lambda x, t: jnp.concatenate([model_fn(x, t), -jnp.ones_like(x)], axis=-1)
  rng = jax.random.key(6)
  ddim = diffusion.ddim_sample(proc, model_fn, SHAPE, rng, eta=1.0)
  ddpm = diffusion.ddpm_sample(proc, ddpm_fn, SHAPE, rng)
  np.testing.assert_allclose(ddim, ddpm, atol=1e-4)
  assert np.abs(np.asarray(ddim) - np.asarray(diffusion.ddim_sample(
      proc, model_fn, SHAPE, rng, eta=0.0))).max() > 1e-2


@pytest.mark.parametrize("keep", [None, diffusion.space_timesteps(1000, 25),
                                  tuple(range(10, 1000, 40))])
def test_samplers_recover_x0_from_an_oracle(keep):
  proc = diffusion.process("linear", 1000, keep)
  x0 = jax.random.uniform(jax.random.key(7), SHAPE, minval=-0.9, maxval=0.9)
  model_fn = _oracle(x0)
  rng = jax.random.key(8)
  ddim = diffusion.ddim_sample(proc, model_fn, SHAPE, rng)
  ddpm = diffusion.ddpm_sample(proc, model_fn, SHAPE, rng)
  np.testing.assert_allclose(ddim, x0, atol=1e-4)
  np.testing.assert_allclose(ddpm, x0, atol=1e-4)
  if keep is not None and keep[0] > 0:
    # Control: the same betas calling the model at the indices, not the original timesteps.
    unmapped = diffusion.Process(proc.betas)
    wrong = diffusion.ddim_sample(unmapped, model_fn, SHAPE, rng)
    assert np.abs(np.asarray(wrong) - np.asarray(x0)).max() > 1e-2


def test_ddpm_samples_gaussian_data_with_its_variance():
  # Data x0 ~ N(0, s^2) per dimension: the exact eps predictor and the exact reverse
  # variance (posterior variance + coef1^2 Var[x0 | x_t]) are known, and v encodes it, so
  # ancestral sampling must give samples of variance s^2 (noise scale errors show here).
  s2, num_steps = 0.25, 1000
  betas = diffusion.betas_for("linear", num_steps)
  abar = np.cumprod(1 - betas)
  abar_prev = np.append(1.0, abar[:-1])
  post_var = betas * (1 - abar_prev) / (1 - abar)
  coef1 = np.sqrt(abar_prev) * betas / (1 - abar)
  true_var = post_var + coef1 ** 2 * s2 * (1 - abar) / (abar * s2 + 1 - abar)
  min_log = np.log(np.append(post_var[1], post_var[1:]))
  frac = (np.log(true_var[1:]) - min_log[1:]) / (np.log(betas[1:]) - min_log[1:])
  assert np.all((frac >= 0) & (frac <= 1))
  v_T = jnp.asarray(np.append(-1.0, 2 * frac - 1), jnp.float32)
  eps_gain_T = jnp.asarray(np.sqrt(1 - abar) / (abar * s2 + 1 - abar), jnp.float32)

  def model_fn(x, t_B):
    return jnp.concatenate([eps_gain_T[t_B][:, None, None, None] * x,
                            jnp.broadcast_to(v_T[t_B][:, None, None, None], x.shape)], -1)

  proc = diffusion.process("linear", num_steps)
  shape = (8, 16, 16, 3)
  x = jax.jit(lambda rng: diffusion.ddpm_sample(proc, model_fn, shape, rng,
                                                clip_denoised=False))(jax.random.key(9))
  assert float(jnp.mean(x)) == pytest.approx(0.0, abs=0.03)
  assert float(jnp.var(x)) == pytest.approx(s2, abs=0.02)  # ~4 standard errors.


def test_bad_settings_are_config_errors():
  with pytest.raises(errors.ConfigError, match="'quadratic'"):
    diffusion.betas_for("quadratic", 1000)
  with pytest.raises(errors.ConfigError, match="'quadratic'"):
    diffusion.process("quadratic", 1000)
  for count in (0, 11):
    with pytest.raises(errors.ConfigError, match=f"steps {count}"):
      diffusion.space_timesteps(10, count)
  with pytest.raises(errors.ConfigError, match="1000"):
    diffusion.process("linear", 100, keep=(0, 1000))
  proc = diffusion.process("linear", 100)
  out, x0, xt, t_B, noise = _hybrid_inputs(proc, t=(1, 2))
  with pytest.raises(errors.ConfigError, match="'l1'"):
    diffusion.training_losses(proc, out, x0, xt, t_B, noise, loss_type="l1")
  with pytest.raises(errors.ConfigError, match="config.loss.loss_type='hybrid'"):
    diffusion.training_losses(proc, out[..., :3], x0, xt, t_B, noise, loss_type="hybrid")


def test_v_prediction_converts_to_epsilon_and_trains_on_v():
  """prediction "v": the true velocity converts back to the true noise, its MSE is zero
  there, and the bound still trains only the variance channels."""
  proc = diffusion.process("cosine", 1000)
  rng = np.random.default_rng(0)
  x0 = jnp.asarray(rng.uniform(-1, 1, (3, 4, 4, 3)), jnp.float32)
  noise = jnp.asarray(rng.normal(size=(3, 4, 4, 3)), jnp.float32)
  t = jnp.array([0, 400, 999])
  xt = diffusion.q_sample(proc, x0, t, noise)
  v = diffusion.v_target(proc, x0, t, noise)
  abar = proc.alphas_cumprod[np.asarray(t)][:, None, None, None]
  np.testing.assert_allclose(
      v, np.sqrt(abar) * np.asarray(noise) - np.sqrt(1 - abar) * np.asarray(x0), atol=1e-6)
  var = jnp.zeros_like(x0)
  out = jnp.concatenate([v, var], axis=-1)
  eps = diffusion.as_epsilon(proc, out, xt, t, "v")
  np.testing.assert_allclose(eps[..., :3], noise, atol=2e-5)
  np.testing.assert_array_equal(eps[..., 3:], var)
  assert diffusion.as_epsilon(proc, out, xt, t, "epsilon") is out
  losses = diffusion.training_losses(proc, out, x0, xt, t, noise, loss_type="hybrid",
                                     prediction="v")
  np.testing.assert_allclose(losses["mse"], 0.0, atol=1e-9)
  grad = jax.grad(lambda o: jnp.sum(diffusion.training_losses(
      proc, o, x0, xt, t, noise, loss_type="hybrid", prediction="v")["vb"]))(out + 0.1)
  assert float(jnp.abs(grad[..., :3]).max()) == 0.0
  assert float(jnp.abs(grad[..., 3:]).max()) > 0.0
  with pytest.raises(ValueError, match="config.model.prediction='x0'"):
    diffusion.as_epsilon(proc, out, xt, t, "x0")


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_min_snr_weighting_counts_the_x0_error_min_snr_gamma_times(prediction):
  """min_snr_gamma: whatever the parametrisation, a prediction whose implied x_0 is off by
  delta costs min(SNR_t, gamma) x mean(delta^2); unweighted it costs SNR_t (epsilon) or
  SNR_t + 1 (v) times as much; "mse" in the logs stays unweighted."""
  proc = diffusion.process("cosine", 1000)
  rng = np.random.default_rng(1)
  x0 = jnp.asarray(rng.uniform(-1, 1, (4, 4, 4, 3)), jnp.float32)
  noise = jnp.asarray(rng.normal(size=(4, 4, 4, 3)), jnp.float32)
  delta = jnp.asarray(rng.normal(scale=0.1, size=(4, 4, 4, 3)), jnp.float32)
  t = jnp.array([5, 300, 700, 990])  # SNR from ~1e4 down to ~1e-4: both sides of gamma.
  xt = diffusion.q_sample(proc, x0, t, noise)
  abar = proc.alphas_cumprod[np.asarray(t)]
  snr = abar / (1 - abar)
  x0_hat = x0 + delta
  eps_hat = diffusion.eps_from_x0(proc, xt, t, x0_hat)
  pred = eps_hat if prediction == "epsilon" else diffusion.v_target(proc, x0_hat, t, eps_hat)
  d2 = np.mean(np.asarray(delta, np.float64) ** 2, axis=(1, 2, 3))
  own = snr if prediction == "epsilon" else snr + 1
  plain = diffusion.training_losses(proc, pred, x0, xt, t, noise, loss_type="simple",
                                    prediction=prediction)
  np.testing.assert_allclose(plain["loss"], own * d2, rtol=2e-3)
  for gamma in (1.0, 5.0):
    weighted = diffusion.training_losses(proc, pred, x0, xt, t, noise, loss_type="simple",
                                         prediction=prediction, min_snr_gamma=gamma)
    np.testing.assert_allclose(weighted["loss"], np.minimum(snr, gamma) * d2, rtol=2e-3)
    np.testing.assert_allclose(weighted["mse"], plain["mse"])
