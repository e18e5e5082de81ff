"""VQGAN family (model, quantizer, loss, adversarial split) and the image tokenizer wrapper."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

from configs import vqgan as vqgan_config
from upgen import families
from upgen.data import readers
from upgen.datasets import shapes
from upgen.models import vqgan
from upgen.models import vqgan_layers as layers
from upgen.tokenizers import image


def small_config(**keys):
  """configs/vqgan.py:tiny at 16 px; each key is set in the group (model, loss, data) that
  has it."""
  config = vqgan_config.get_config("tiny")
  config.data.image_size = 16
  config.model.base_channels = 4
  config.model.channel_multipliers = (1, 2)
  config.model.num_res_blocks = 1
  config.model.codebook_size = 8
  config.model.embedding_dim = 4
  config.model.norm = "group"
  return set_keys(config, **keys)


def set_keys(config, **keys):
  """Each key set in the config group (model, loss, data) that has it."""
  for k, v in keys.items():
    next(g for g in (config.model, config.loss, config.data) if k in g)[k] = v
  return config


def build(config):
  return families.build(config, readers.IMAGE_FOLDER.spec(config.data))


def init_params(config, seed=0):
  """(setup, params): params of the model's shapes filled from numpy (jit-compiling the
  PRNG-based init costs tens of seconds on a small CPU; `model.init` itself is traced in the
  eval_shape tests)."""
  setup = build(config)
  model = setup.model
  abstract = jax.eval_shape(lambda: vqgan.init_variables(
      model, jax.random.key(0), setup.dummy_batch(1)))
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    if name.endswith("['kernel']"):
      return rng.normal(size=leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))
    if name.endswith("['codebook']"):
      return rng.uniform(-1, 1, leaf.shape) * np.sqrt(3 / leaf.shape[-1])
    return np.ones(leaf.shape) if name.endswith("['scale']") else np.zeros(leaf.shape)

  params = jax.tree_util.tree_map_with_path(fill, nn.meta.unbox(abstract["params"]))
  return setup, jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)


def shapes_images(n, size=16, seed=0):
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    _, objects, masks = shapes.sample_one_object(rng, size)
    out.append(shapes.render(objects, masks))
  return np.stack(out)


def test_family_export_and_variants():
  family = families.get_family("vqgan")
  assert family is vqgan.FAMILY and family.reads is readers.IMAGE_FOLDER
  for variant in ("tiny", "base"):
    config = vqgan_config.get_config(variant)
    setup = build(config)
    shapes_ = jax.eval_shape(lambda r: family.init_variables(
        setup.model, r, setup.dummy_batch(1)), jax.random.key(0))
    codebook = nn.meta.unbox(shapes_["params"]["vqgan"]["quantizer"]["codebook"])
    assert codebook.shape == (config.model.codebook_size, config.model.embedding_dim)
    assert ("disc" in shapes_["params"]) == config.model.discriminator
    assert family.train_flops(setup.model_config).total > 0
  assert build(vqgan_config.get_config("tiny")).model_config.grid == 8
  with pytest.raises(ValueError, match="config.model.norm"):
    build(small_config(norm="batch"))
  with pytest.raises(ValueError, match="config.data.image_size=12"):
    build(small_config(image_size=12, channel_multipliers=(1, 2, 2, 2)))
  with pytest.raises(ValueError, match="config.loss.adversarial_weight=0.1 needs a "
                                       "discriminator"):
    build(small_config(adversarial_weight=0.1))


@pytest.mark.parametrize("norm", ["group", "none"])
def test_every_param_has_logical_axes(norm):
  config = small_config(adversarial_weight=0.1, discriminator=True, norm=norm)
  model = build(config).model
  boxed = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 16, 16, 3)))["params"]
  leaves = jax.tree_util.tree_flatten_with_path(
      boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))[0]
  assert {"vqgan", "disc"} == set(boxed)
  for path, leaf in leaves:
    name = jax.tree_util.keystr(path)
    assert isinstance(leaf, nn.LogicallyPartitioned), name
    assert len(leaf.names) == len(leaf.value.shape), name
    if name.endswith("['kernel']"):
      head = name.endswith("['conv_out']['kernel']") and "decoder" in name or "logits" in name
      assert leaf.names == (layers.HEAD_KERNEL_AXES if head else layers.KERNEL_AXES), name
    if name.endswith("['codebook']"):
      assert leaf.names == layers.CODEBOOK_AXES, name


@pytest.mark.parametrize("l2_normalize,revive", [(False, 0.0), (True, 0.0), (False, 0.5)])
def test_quantizer_nearest_code_and_straight_through(l2_normalize, revive):
  cfg = layers.VQGANConfig(image_size=8, codebook_size=8, embedding_dim=4,
                           codebook_l2_normalize=l2_normalize)
  quantizer = layers.VectorQuantizer(cfg)
  commitment_cost = 0.25
  loss_vq = lambda stats: (stats["codebook"] + commitment_cost * stats["commitment"]
                           + revive * stats["revive"])
  rng = np.random.default_rng(0)
  z = jnp.asarray(rng.normal(size=(2, 3, 3, 4)), jnp.float32)
  w = jnp.asarray(rng.normal(size=z.shape), jnp.float32)
  params = {"codebook": jnp.asarray(rng.normal(size=(8, 4)), jnp.float32)}

  @jax.jit
  def run(params, z):
    quantized, ids, stats = quantizer.apply({"params": params}, z)
    grad_z = jax.grad(lambda v: jnp.sum(w * quantizer.apply({"params": params}, v)[0]))(z)
    grad_codes = jax.grad(lambda p: loss_vq(quantizer.apply({"params": p}, z)[2]))(params)
    encoded = quantizer.apply({"params": params}, z, method=layers.VectorQuantizer.nearest)
    return quantized, ids, stats, grad_z, grad_codes["codebook"], encoded

  quantized, ids, stats, grad_z, grad_codes, encoded = run(params, z)
  codes = np.asarray(params["codebook"])
  zz = np.asarray(z).reshape(-1, 4)
  if l2_normalize:
    codes = codes / np.linalg.norm(codes, axis=-1, keepdims=True)
    zz = zz / np.linalg.norm(zz, axis=-1, keepdims=True)
  dist = ((zz[:, None] - codes[None]) ** 2).sum(-1)
  expected = np.argmin(dist, axis=1)
  np.testing.assert_array_equal(np.asarray(ids).reshape(-1), expected)
  np.testing.assert_array_equal(encoded, ids)
  np.testing.assert_allclose(np.asarray(quantized).reshape(-1, 4), codes[expected], atol=1e-5)
  anchors = zz[np.argmin(dist, axis=0)]
  vq = ((1 + commitment_cost) * np.mean((zz - codes[expected]) ** 2)
        + revive * np.mean((anchors - codes) ** 2))
  np.testing.assert_allclose(loss_vq(stats), vq, rtol=1e-4)
  used = np.bincount(expected, minlength=8) > 0
  np.testing.assert_array_equal(stats["code_counts"], np.bincount(expected, minlength=8))
  assert not used.all()  # Some codes are dead: the revival term is what moves them.
  if not l2_normalize:
    # Straight-through: d(sum(w * quantized))/dz == w.
    np.testing.assert_allclose(grad_z, w, atol=1e-6)
    # A dead code moves only by the revival term, toward its nearest encoder output.
    np.testing.assert_allclose(np.asarray(grad_codes)[~used],
                               revive * 2 * (codes - anchors)[~used] / codes.size, atol=1e-6)
  moved = np.abs(np.asarray(grad_codes)).sum(-1) > 0
  np.testing.assert_array_equal(moved, used | (revive > 0))


def test_metrics_helpers():
  x = jnp.zeros((2, 4, 4, 3))
  np.testing.assert_allclose(vqgan.psnr(x, x + 0.2), 10 * np.log10(4 / 0.04), rtol=1e-5)
  stats = vqgan.code_stats(jnp.array([2.0, 2.0, 0.0, 0.0]))
  np.testing.assert_allclose(stats["codebook_usage"], 0.5)
  np.testing.assert_allclose(stats["perplexity"], 2.0, rtol=1e-5)
  pixels = np.array([0, 1, 127, 128, 255], np.uint8)
  np.testing.assert_array_equal(vqgan.to_uint8(vqgan.to_unit(pixels)), pixels)


def test_loss_metrics_and_gradients():
  setup, params = init_params(small_config())
  batch = {"image": shapes_images(4)}
  loss_fn = jax.jit(jax.value_and_grad(
      lambda p, b: setup.loss_fn()(p, b, jax.random.key(0), train=True, step=0), has_aux=True))
  (loss, metrics), grads = loss_fn(params, batch)
  assert {"loss", "loss_l1", "loss_l2", "loss_vq", "psnr", "codebook_usage",
          "perplexity"} <= set(metrics)
  assert all(np.isfinite(float(v)) for v in metrics.values())
  np.testing.assert_allclose(
      loss, metrics["loss_l1"] + metrics["loss_l2"] + metrics["loss_vq"], rtol=1e-5)
  # Gradients reach the encoder (straight-through) and the codebook.
  assert float(optax.tree.norm(grads["vqgan"]["encoder"])) > 0
  assert float(jnp.abs(grads["vqgan"]["quantizer"]["codebook"]).sum()) > 0


def test_adversarial_terms_train_only_their_own_params():
  config = small_config(adversarial_weight=0.5, adversarial_start=10, num_res_blocks=0,
                        norm="none", discriminator=True)
  setup, params = init_params(config)
  model = setup.model
  x = vqgan.to_unit(shapes_images(4))

  @jax.jit
  def grads(params, step):
    loss_grads, metrics = jax.grad(lambda p: setup.loss_fn()(
        p, {"image": shapes_images(4)}, jax.random.key(0), train=True, step=step),
                                   has_aux=True)(params)

    def terms(p):
      recon = model.apply({"params": {"vqgan": p["vqgan"]}}, x,
                          method=vqgan.VQGANModel.autoencode)[0]
      return jnp.stack(vqgan.adversarial_losses(p, x, recon, model))

    term_grads = jax.jacrev(terms)(params)
    return (loss_grads, metrics, jax.tree.map(lambda g: g[0], term_grads),
            jax.tree.map(lambda g: g[1], term_grads))

  norm = lambda tree: float(optax.tree.norm(tree))
  before, metrics_before, _, _ = grads(params, jnp.int32(9))
  after, metrics_after, generator, discriminator = grads(params, jnp.int32(10))
  assert float(metrics_before["adversarial_active"]) == 0
  assert float(metrics_after["adversarial_active"]) == 1
  assert norm(before["disc"]) == 0 and norm(after["disc"]) > 0
  assert norm(generator["disc"]) == 0 and norm(generator["vqgan"]["decoder"]) > 0
  assert norm(discriminator["vqgan"]) == 0 and norm(discriminator["disc"]) > 0


def test_training_improves_reconstructions():
  config = small_config(norm="none", num_res_blocks=0, base_channels=8, codebook_size=16)
  setup, params = init_params(config)
  model = setup.model
  images = shapes_images(32, seed=1)
  tx = optax.adam(1e-2)

  @jax.jit
  def step(params, opt_state, batch):
    (_, metrics), grads = jax.value_and_grad(vqgan.loss_fn, has_aux=True)(
        params, batch, jax.random.key(0), model=model, settings=setup.loss, train=True)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, metrics

  opt_state = tx.init(params)
  psnrs = []
  for i in range(120):
    params, opt_state, metrics = step(params, opt_state, {"image": images[i % 4 * 8:][:8]})
    psnrs.append(float(metrics["psnr"]))
  assert np.mean(psnrs[-10:]) > np.mean(psnrs[:10]) + 6
  preview = jax.jit(lambda p, b: vqgan.preview(p, b, jax.random.key(0), model=model))(
      params, {"image": images[:4]})
  assert preview.shape == (4, 16, 16, 3) and preview.dtype == jnp.uint8


def test_flops_estimate_matches_xla():
  config = small_config(base_channels=8, num_res_blocks=1)
  setup, params = init_params(config)
  model = setup.model
  x = jnp.zeros((1, 16, 16, 3))
  forward = lambda p, v: model.apply({"params": p}, v, method=vqgan.VQGANModel.autoencode)[0]
  cost = jax.jit(forward).lower(params, x).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  estimate = layers.autoencoder_flops(model.cfg)
  # XLA skips the taps that fall on SAME padding; the estimate counts them.
  assert 0.9 < estimate / cost["flops"] < 1.2


def test_image_tokenizer_batches_and_round_trip():
  setup, params = init_params(small_config())
  model = setup.model
  tok = image.ImageTokenizer(setup, params, path="/runs/x", batch_size=4)
  assert (tok.codebook_size, tok.grid, tok.image_size) == (8, (8, 8), 16)
  images = shapes_images(7)
  ids = tok.encode(images)
  assert ids.shape == (7, 8, 8) and ids.dtype == np.int32
  assert ids.min() >= 0 and ids.max() < 8 and len(np.unique(ids)) > 1
  # Padding the last batch does not change the ids of the real images.
  np.testing.assert_array_equal(ids, np.concatenate([tok.encode(images[:4]), tok.encode(images[4:])]))
  decoded = tok.decode(ids)
  assert decoded.shape == (7, 16, 16, 3) and decoded.dtype == np.uint8
  reference = jax.jit(lambda p, x: vqgan.reconstruct(p, x, model=model))(params, images)
  np.testing.assert_array_equal(decoded, reference)
  assert tok.encode(images[:0]).shape == (0, 8, 8)
  with pytest.raises(ValueError, match="uint8 images of shape"):
    tok.encode(images[:, :8])
  with pytest.raises(ValueError, match=r"ids must lie in \[0, 8\)"):
    tok.decode(ids + 8)


def test_image_tokenizer_identity():
  setup, params = init_params(small_config())
  identity = image.ImageTokenizer(setup, params, path="/runs/x").identity()
  assert identity["family"] == "vqgan" and identity["path"] == "/runs/x"
  assert identity["config"]["codebook_size"] == 8
  json.dumps(identity)
  assert image.ImageTokenizer(setup, params).identity()["sha256"] == identity["sha256"]
  _, other = init_params(small_config(), seed=1)
  assert image.ImageTokenizer(setup, other).identity()["sha256"] != identity["sha256"]
  with pytest.raises(ValueError, match="'vqgan' entry"):
    image.ImageTokenizer(setup, params["vqgan"])


def test_load_restores_a_training_checkpoint(tmp_path):
  from upgen.runtime import checkpoint, optimizer
  config = small_config()
  setup, params = init_params(config, seed=3)
  state = {"step": jnp.int32(5), "params": params,
           "opt_state": optimizer.make_optimizer(config.optim, config.train.steps).init(params)}
  checkpoint.save_run_config(str(tmp_path), config, setup.spec)
  ckpt = checkpoint.Checkpointer(str(tmp_path), async_save=False)
  ckpt.save(5, state)
  ckpt.close()
  tok = image.load(str(tmp_path))
  assert tok.path == str(tmp_path) and tok.grid == (8, 8)
  assert tok.identity()["sha256"] == image.params_sha256({"vqgan": params["vqgan"]})
