"""The VQGAN taming recipe: LPIPS-VGG perceptual loss (frozen constants of the loss, not
trained params) and the adaptive GAN weight at the decoder's last layer."""
import logging

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import vqgan as vqgan_config
from tests.test_image_metrics import _random_lpips
from tests.test_vqgan import build, init_params, shapes_images, small_config
from upgen import errors
from upgen.models import image_metrics
from upgen.models import vqgan
from upgen.models import vqgan_loss


@pytest.fixture(scope="module")
def lpips_file(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("lpips") / "lpips.safetensors")
  image_metrics.save_lpips(_random_lpips(), path)
  return path


def loss_and_grads(setup, params, images, step):
  return jax.jit(jax.value_and_grad(
      lambda p: setup.loss_fn()(p, {"image": images}, jax.random.key(0), train=True, step=step),
      has_aux=True))(params)


def gan_config(**keys):
  """A tiny discriminator model with the adversarial terms on from step 10."""
  keys = dict(dict(discriminator=True, adversarial_weight=0.5, adversarial_start=10,
                   num_res_blocks=0, norm="none"), **keys)
  return small_config(**keys)


def test_tiny_keeps_its_loss_and_base_takes_the_recipe(caplog):
  tiny = vqgan_config.get_config("tiny").loss
  assert (tiny.lpips_weight, tiny.lpips_weights, tiny.adaptive_gan_weight) == (0.0, "", False)
  base = vqgan_config.get_config("base")
  assert base.loss.lpips_weight == 1.0 and base.loss.adaptive_gan_weight
  assert base.loss.adversarial_start > 0 and base.model.discriminator
  with pytest.raises(errors.ConfigError, match="adaptive_gan_weight=True needs a discriminator"):
    build(small_config(adaptive_gan_weight=True))
  with pytest.raises(errors.ConfigError, match=r"config.loss.lpips_weight=-1.0: must be >= 0"):
    build(small_config(lpips_weight=-1.0))


def test_lpips_term_is_the_metric_times_its_weight(lpips_file):
  plain, params = init_params(small_config())
  setup = build(small_config(lpips_weight=0.5, lpips_weights=lpips_file))
  lpips_params = setup.loss.lpips_params
  assert lpips_params is not None and plain.loss.lpips_params is None
  images = shapes_images(4)
  (loss, metrics), grads = loss_and_grads(setup, params, images, 0)
  (plain_loss, plain_metrics), plain_grads = loss_and_grads(plain, params, images, 0)

  @jax.jit  # LPIPS params as arguments, not constants: a faster compile.
  def metric(params, lpips_params, x):
    recon = setup.model.apply({"params": params}, x, method=vqgan.VQGANModel.autoencode)[0]
    return jnp.mean(image_metrics.lpips(lpips_params, recon, x))

  expected = float(metric(params, lpips_params, vqgan.to_unit(images)))
  assert expected > 0
  np.testing.assert_allclose(metrics["loss_lpips"], expected, rtol=1e-5)
  np.testing.assert_allclose(loss - plain_loss, 0.5 * expected, rtol=1e-4)
  assert "loss_lpips" not in plain_metrics
  # The LPIPS params are constants of the loss: the trained tree (and so the optimizer
  # state and checkpoints) is the same as without them, and gradients reach the autoencoder.
  abstract = jax.eval_shape(lambda: vqgan.init_variables(
      setup.model, jax.random.key(0), setup.dummy_batch(1)))["params"]
  assert (jax.tree.structure(grads) == jax.tree.structure(params)
          == jax.tree.structure(abstract, is_leaf=lambda v: hasattr(v, "names")))
  assert set(params) == {"vqgan"}
  for part in ("encoder", "decoder"):
    delta = optax.tree.norm(jax.tree.map(jnp.subtract, grads["vqgan"][part],
                                         plain_grads["vqgan"][part]))
    assert float(delta) > 0, part  # The perceptual term moves both halves.


def test_lpips_weight_without_a_file_warns_once_and_trains_without_it(caplog):
  with caplog.at_level(logging.WARNING, logger="upgen.vqgan"):
    setup, params = init_params(small_config(lpips_weight=1.0))
    assert setup.loss.lpips_params is None and setup.loss.lpips_params is None
  lines = [r.getMessage() for r in caplog.records if "lpips" in r.getMessage()]
  assert len(lines) == 1 and "config.loss.lpips_weights is empty" in lines[0]
  assert "WITHOUT the LPIPS term" in lines[0]
  (loss, metrics), _ = loss_and_grads(setup, params, shapes_images(2), 0)
  assert "loss_lpips" not in metrics
  np.testing.assert_allclose(
      loss, metrics["loss_l1"] + metrics["loss_l2"] + metrics["loss_vq"], rtol=1e-6)


def test_a_missing_or_bad_lpips_file_is_one_line_naming_it(tmp_path):
  missing = str(tmp_path / "nope.safetensors")
  # Building the run needs no weights (a tokenizer rebuilt on a host without the file
  # encodes); the loss, when first traced, reads them.
  setup = build(small_config(lpips_weight=1.0, lpips_weights=missing))
  with pytest.raises(errors.NotFound) as e:
    setup.loss.lpips_params  # pylint: disable=pointless-statement
  assert str(e.value).startswith(f"config.loss.lpips_weights: {missing}: no such")
  assert "\n" not in str(e.value)
  junk = tmp_path / "junk.safetensors"
  junk.write_bytes(b"not safetensors")
  with pytest.raises(errors.DataError, match=r"config.loss.lpips_weights: .*junk.safetensors"):
    build(small_config(lpips_weight=1.0, lpips_weights=str(junk))).loss.lpips_params  # pylint: disable=expression-not-assigned
  # With the weight at 0 the file is not read at all.
  assert build(small_config(lpips_weights=missing)).loss.lpips_params is None


def direct_terms(setup, x, lpips_params=None):
  """Reference functions of the whole params: reconstructions, L_rec, generator loss."""
  model, settings = setup.model, vqgan_loss.LossSettings(setup.loss.loss)
  settings.__dict__["lpips_params"] = lpips_params  # What the cached property would hold.

  def recon_of(p):
    return model.apply({"params": {"vqgan": p["vqgan"]}}, x,
                       method=vqgan.VQGANModel.autoencode)

  def rec_loss(p):
    return vqgan_loss.reconstruction_loss(recon_of(p)[0], x, settings)[0]

  def gen_loss(p):
    return vqgan.generator_loss(p, recon_of(p)[0], model)

  return recon_of, rec_loss, gen_loss


def test_adaptive_weight_is_taming_lambda_with_lpips_in_l_rec(lpips_file):
  setup, params = init_params(gan_config(adaptive_gan_weight=True, lpips_weight=1.0,
                                         lpips_weights=lpips_file))
  images = shapes_images(4)
  (_, metrics), _ = loss_and_grads(setup, params, images, 10)
  assert float(metrics["loss_lpips"]) > 0
  # Directly: the norms of the whole model's gradients w.r.t. the decoder's last kernel.
  kernel = lambda g: g["vqgan"]["decoder"]["conv_out"]["kernel"]

  @jax.jit
  def direct(p, lpips_params):
    _, rec_loss, gen_loss = direct_terms(setup, vqgan.to_unit(images), lpips_params)
    return kernel(jax.grad(rec_loss)(p)), kernel(jax.grad(gen_loss)(p))

  g_rec, g_gen = direct(params, setup.loss.lpips_params)
  lam = np.linalg.norm(g_rec) / (np.linalg.norm(g_gen) + 1e-4)
  assert 0 < lam < 1e4
  np.testing.assert_allclose(metrics["adaptive_weight"], lam, rtol=1e-4)
  np.testing.assert_allclose(metrics["gan_weight"], 0.5 * lam, rtol=1e-4)


def test_adaptive_loss_and_gradients_are_the_direct_ones():
  setup, params = init_params(gan_config(adaptive_gan_weight=True))
  model, w = setup.model, setup.loss.loss
  images = shapes_images(4)
  x = vqgan.to_unit(images)
  (loss, metrics), grads = loss_and_grads(setup, params, images, 10)
  recon_of, rec_loss, gen_loss = direct_terms(setup, x)

  @jax.jit
  def direct(p):
    """L_rec + sg(0.5 lambda) L_gen + vq + disc, lambda from whole-model gradients."""
    g_rec, g_gen = (jax.grad(f)(p)["vqgan"]["decoder"]["conv_out"]["kernel"]
                    for f in (rec_loss, gen_loss))
    lam = jax.lax.stop_gradient(
        jnp.linalg.norm(g_rec) / (jnp.linalg.norm(g_gen) + 1e-4))

    def total(p):
      recon, _, stats = recon_of(p)
      vq = (stats["codebook"] + w.commitment_cost * stats["commitment"]
            + w.codebook_revive_weight * stats["revive"])
      return (rec_loss(p) + 0.5 * lam * gen_loss(p) + vq
              + vqgan.discriminator_loss(p, x, recon, model))

    return lam, jax.value_and_grad(total)(p)

  lam, (want_loss, want_grads) = direct(params)
  np.testing.assert_allclose(metrics["adaptive_weight"], lam, rtol=1e-4)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
  for (path, got), want in zip(jax.tree_util.tree_flatten_with_path(grads)[0],
                               jax.tree.leaves(want_grads)):
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-6,
                               err_msg=jax.tree_util.keystr(path))
  assert float(optax.tree.norm(grads["disc"])) > 0


def test_adaptive_weight_clamps_and_is_a_constant():
  big = {"w": jnp.full((3,), 1e3)}
  np.testing.assert_allclose(vqgan_loss.adaptive_weight(big, {"w": jnp.zeros(3)}), 1e4)
  np.testing.assert_allclose(vqgan_loss.adaptive_weight({"w": jnp.array([3.0, 4.0])},
                                                        {"w": jnp.array([0.0, 2.0])}),
                             5 / (2 + 1e-4), rtol=1e-6)
  grad = jax.grad(lambda a: vqgan_loss.adaptive_weight({"w": a}, {"w": jnp.ones(2)}))
  np.testing.assert_array_equal(grad(jnp.array([1.0, 2.0])), 0.0)


def test_adaptive_weight_has_no_effect_before_the_start():
  images = shapes_images(4)
  fixed, params = init_params(gan_config())
  adaptive = build(gan_config(adaptive_gan_weight=True))
  (loss, metrics), grads = loss_and_grads(adaptive, params, images, 9)
  (want_loss, want_metrics), want_grads = loss_and_grads(fixed, params, images, 9)
  for key in ("loss_gen", "loss_disc", "gan_weight", "adaptive_weight", "adversarial_active"):
    assert float(metrics[key]) == 0, key
  assert not any(np.any(g) for g in jax.tree.leaves(grads["disc"]))
  np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
  np.testing.assert_allclose(
      loss, metrics["loss_l1"] + metrics["loss_l2"] + metrics["loss_vq"], rtol=1e-6)
  for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-7)
  (_, after), _ = loss_and_grads(adaptive, params, images, 10)
  assert float(after["adaptive_weight"]) > 0 and float(after["adversarial_active"]) == 1
