"""dVAE family (DALL-E's discrete VAE): model, schedules, likelihood, training, and the run
as an image tokenizer (`image.load`, `tokenize.tokenize_folder`, records every token family
reads)."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

from configs import dvae as dvae_config
from tests import test_tokenize
from tests import test_vqgan
from upgen import families
from upgen.data import readers
from upgen.data import records
from upgen.data import sources
from upgen.datasets import shapes
from upgen.datasets import tokenize
from upgen.models import dvae
from upgen.models import dvae_layers as layers
from upgen.models import vqgan_layers
from upgen.tokenizers import image
from upgen.train import trainer


def small_config(**keys):
  """configs/dvae.py:tiny at 16 px (8x8 grid of 16 codes); each key is set in the group
  (model, loss, data) that has it."""
  config = dvae_config.get_config("tiny")
  config.data.image_size = 16
  config.model.base_channels = 8
  config.model.channel_multipliers = (1, 2)
  config.model.num_res_blocks = 1
  config.model.codebook_size = 16
  config.model.decoder_init_channels = 8
  return test_vqgan.set_keys(config, **keys)


build = test_vqgan.build  # The image-folder family built for its config.


def init_params(config, seed=0):
  """(setup, params) filled from numpy (cheaper than jit-compiling the PRNG init on CPU)."""
  setup = build(config)
  abstract = jax.eval_shape(lambda: dvae.init_variables(
      setup.model, jax.random.key(0), setup.dummy_batch(1)))
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    if jax.tree_util.keystr(path).endswith("['kernel']"):
      return rng.normal(size=leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))
    return np.zeros(leaf.shape)

  params = jax.tree_util.tree_map_with_path(fill, nn.meta.unbox(abstract["params"]))
  return setup, jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)


def test_family_export_and_variants():
  family = families.get_family("dvae")
  assert family is dvae.FAMILY and family.reads is readers.IMAGE_FOLDER
  assert family.image_codec.params_keys == ("encoder", "decoder")
  for variant, grid in (("tiny", 8), ("base", 32)):
    config = dvae_config.get_config(variant)
    setup = build(config)
    assert setup.model_config.grid == grid
    shapes_ = jax.eval_shape(lambda r: family.init_variables(
        setup.model, r, setup.dummy_batch(1)), jax.random.key(0))["params"]
    assert set(shapes_) == {"encoder", "decoder"}
    logits = nn.meta.unbox(shapes_["encoder"]["logits"]["kernel"])
    assert logits.shape[-1] == config.model.codebook_size
    codes = nn.meta.unbox(shapes_["decoder"]["conv_in"]["kernel"])
    assert codes.shape == (1, 1, config.model.codebook_size, config.model.decoder_init_channels)
    assert nn.meta.unbox(shapes_["decoder"]["conv_out"]["kernel"]).shape[-1] == 6
  with pytest.raises(ValueError, match="config.data.image_size=12"):
    build(small_config(image_size=12, channel_multipliers=(1, 2, 2, 2)))
  with pytest.raises(ValueError, match="config.loss.temperature_end"):
    build(small_config(temperature_end=0.0))


def test_every_param_has_logical_axes():
  model = build(small_config()).model
  boxed = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 16, 16, 3)))["params"]
  leaves = jax.tree_util.tree_flatten_with_path(
      boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))[0]
  assert len(leaves) > 10
  for path, leaf in leaves:
    name = jax.tree_util.keystr(path)
    assert isinstance(leaf, nn.LogicallyPartitioned), name
    assert len(leaf.names) == len(leaf.value.shape), name
    if name.endswith("['kernel']"):
      expected = (layers.LOGITS_KERNEL_AXES if "['logits']" in name else
                  layers.CODES_KERNEL_AXES if "['decoder']['conv_in']" in name else
                  vqgan_layers.HEAD_KERNEL_AXES if "['decoder']['conv_out']" in name else
                  vqgan_layers.KERNEL_AXES)
      assert leaf.names == expected, name


@pytest.mark.parametrize("decoder", [False, True])
def test_residual_branch_is_scaled_by_one_over_n_layers_squared(decoder):
  cfg = build(small_config(num_res_blocks=2)).model_config
  assert cfg.n_layers == 4 and cfg.post_gain == 1 / 16
  block = layers.ResBlock(cfg, 8, 8, decoder=decoder)
  x = jax.random.normal(jax.random.key(0), (2, 4, 4, 8))
  variables = block.init(jax.random.key(1), x)
  out = block.apply(variables, x)
  branch = block.apply(variables, x, method=layers.ResBlock.branch)
  assert float(jnp.abs(branch).max()) > 0.1
  np.testing.assert_allclose(out, x + branch / 16, rtol=1e-5, atol=1e-6)
  # A block that changes width adds the branch to its 1x1 shortcut.
  wide = layers.ResBlock(cfg, 8, 16, decoder=decoder)
  variables = wide.init(jax.random.key(1), x)
  shortcut = nn.Conv(16, (1, 1)).apply({"params": nn.meta.unbox(
      variables["params"]["shortcut"])}, x)
  np.testing.assert_allclose(
      wide.apply(variables, x),
      shortcut + wide.apply(variables, x, method=layers.ResBlock.branch) / 16,
      rtol=1e-5, atol=1e-6)


def test_schedules_at_start_middle_and_end():
  loss = build(small_config(kl_warmup_steps=100, temperature_steps=1000)).loss
  assert loss.kl_weight == 6.6
  temps = [float(dvae.temperature(loss, s)) for s in (0, 500, 1000, 5000)]
  np.testing.assert_allclose(temps, [1.0, (1 + 1 / 16) / 2, 1 / 16, 1 / 16], rtol=1e-6)
  betas = [float(dvae.kl_weight(loss, s)) for s in (0, 50, 100, 5000)]
  np.testing.assert_allclose(betas, [0.0, 3.3, 6.6, 6.6], rtol=1e-6, atol=1e-7)
  assert float(dvae.temperature(loss, jnp.int32(250))) > float(dvae.temperature(loss, 750))


def test_logit_laplace_nll_matches_the_density():
  rng = np.random.default_rng(0)
  x = rng.uniform(dvae.EPS, 1 - dvae.EPS, 12)
  mu, log_b = rng.normal(size=12), rng.normal(size=12) * 0.5
  b = np.exp(log_b)
  density = np.exp(-np.abs(np.log(x / (1 - x)) - mu) / b) / (2 * b * x * (1 - x))
  np.testing.assert_allclose(dvae.logit_laplace_nll(x, mu, log_b), -np.log(density),
                             rtol=1e-5)
  # It is a density on (0, 1): it integrates to 1.
  grid = np.linspace(1e-6, 1 - 1e-6, 400_001)
  pdf = np.exp(-np.asarray(dvae.logit_laplace_nll(jnp.asarray(grid), 0.3, -1.0)))
  assert abs(np.sum(pdf) * (grid[1] - grid[0]) - 1) < 1e-3
  # Pixels map to [eps, 1 - eps] and back.
  pixels = np.array([0, 1, 127, 254, 255], np.uint8)
  mapped = dvae.map_pixels(pixels)
  np.testing.assert_allclose([mapped.min(), mapped.max()], [0.1, 0.9], rtol=1e-6)
  np.testing.assert_array_equal(dvae.to_uint8(dvae.unmap_pixels(mapped)), pixels)


def test_gumbel_softmax_is_near_one_hot_at_a_low_temperature():
  logits = jax.random.normal(jax.random.key(0), (4, 8, 8, 16))
  rng = jax.random.key(1)
  cold = dvae.gumbel_softmax(logits, rng, jnp.float32(1 / 16))
  warm = dvae.gumbel_softmax(logits, rng, jnp.float32(1.0))
  np.testing.assert_allclose(cold.sum(-1), 1.0, rtol=1e-5)
  assert float(jnp.median(cold.max(-1))) > 0.99 and float(jnp.mean(cold.max(-1))) > 0.9
  assert float(jnp.mean(warm.max(-1))) < 0.8
  # Both pick argmax(logits + gumbel noise), the sample the relaxation stands for.
  np.testing.assert_array_equal(cold.argmax(-1), warm.argmax(-1))
  # The KL to the uniform prior: 0 for flat logits, log K for one-hot ones.
  np.testing.assert_allclose(dvae.kl_to_uniform(jnp.zeros((1, 16))), 0.0, atol=1e-6)
  np.testing.assert_allclose(dvae.kl_to_uniform(jnp.eye(16)[None] * 1e4), np.log(16),
                             rtol=1e-5)


def test_training_decreases_the_loss():
  config = small_config(kl_warmup_steps=400, temperature_steps=1200)
  setup, params = init_params(config)
  images = test_vqgan.shapes_images(32, seed=1)
  tx = optax.adam(3e-3)

  @jax.jit
  def step(params, opt_state, batch, i):
    (_, metrics), grads = jax.value_and_grad(dvae.loss_fn, has_aux=True)(
        params, batch, jax.random.fold_in(jax.random.key(0), i), model=setup.model,
        settings=setup.loss, train=True, step=i)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, metrics

  opt_state = tx.init(params)
  history = []
  for i in range(30):
    params, opt_state, metrics = step(params, opt_state, {"image": images[i % 4 * 8:][:8]},
                                      jnp.int32(i))
    history.append({k: float(v) for k, v in metrics.items()})
  assert all(np.isfinite(h["loss"]) for h in history)
  first, last = (np.mean([h["loss"] for h in part]) for part in (history[:5], history[-5:]))
  assert last < first - 0.2, (first, last)
  assert history[-1]["kl_weight"] > history[0]["kl_weight"] == 0.0
  assert history[-1]["temperature"] < history[0]["temperature"] == 1.0
  loss, metrics = dvae.loss_fn(params, {"image": images[:8]}, jax.random.key(0),
                               model=setup.model, settings=setup.loss, train=False, step=30)
  assert np.isfinite(float(loss)) and 0 < float(metrics["codebook_usage"]) <= 1


def test_argmax_encode_is_deterministic_and_decode_is_the_one_hot_decoder():
  setup, params = init_params(small_config(), seed=2)
  model, images = setup.model, test_vqgan.shapes_images(4)
  encode = jax.jit(lambda p, x: dvae.encode_images(p, x, model=model))
  ids = encode(params, images)
  np.testing.assert_array_equal(ids, encode(params, images))
  logits = model.apply({"params": params}, dvae.map_pixels(images), method=dvae.DVAEModel.logits)
  np.testing.assert_array_equal(ids, jnp.argmax(logits, -1))
  assert ids.shape == (4, 8, 8) and ids.dtype == jnp.int32
  decoded = dvae.decode_ids(params, ids, model=model)
  stats = model.apply({"params": params}, jax.nn.one_hot(ids, 16),
                      method=dvae.DVAEModel.decode_relaxed)
  np.testing.assert_array_equal(decoded, dvae.to_uint8(dvae.stats_to_pixels(stats)))
  assert decoded.shape == (4, 16, 16, 3) and decoded.dtype == jnp.uint8


@pytest.fixture(scope="module")
def dvae_run(tmp_path_factory):
  """A 16 px shapes folder and a dVAE run (2 steps through the trainer)."""
  root = tmp_path_factory.mktemp("dvae_run")
  images = str(root / "shapes")
  shapes.generate(images, image_size=16, num_train=24, num_val=8, num_test=8, seed=0)
  config = small_config()
  config.update_from_flattened_dict({"data.dir": images, "data.batch_size": 4,
                                     "train.steps": 2, "train.progress": False,
                                     "train.eval_batches": 1, "train.sample_every": 0})
  trainer.train(config, str(root / "dvae"))
  return images, str(root / "dvae")


def test_a_dvae_run_is_an_image_tokenizer(dvae_run, tmp_path):
  images, workdir = dvae_run
  tok = image.load(workdir, batch_size=4)
  assert (tok.codebook_size, tok.grid, tok.image_size) == (16, (8, 8), 16)
  identity = tok.identity()
  assert identity["family"] == "dvae" and identity["path"] == workdir
  assert identity["config"]["codebook_size"] == 16
  json.dumps(identity)
  pixels = test_vqgan.shapes_images(5)
  ids = tok.encode(pixels)
  assert ids.shape == (5, 8, 8) and ids.dtype == np.int32
  assert ids.min() >= 0 and ids.max() < 16
  decoded = tok.decode(ids)
  assert decoded.shape == (5, 16, 16, 3) and decoded.dtype == np.uint8
  # Records written with it read back as every token family reads them.
  out = str(tmp_path / "records")
  src = {s: sources.ImageFolderSource(os.path.join(images, s), 16) for s in ("train", "val")}
  meta = tokenize.tokenize_folder(src, out, test_tokenize.CharTokenizer(), tok, batch_size=8)
  assert meta["image_tokenizer"]["identity"]["family"] == "dvae"
  data = records.RecordDataSource(out, "train")
  assert len(data) == 24
  tokens = np.stack([data[i]["image_tokens"] for i in range(len(data))])
  assert tokens.shape == (24, 64) and tokens.min() >= 0 and tokens.max() < 16
  first = np.asarray(src["train"][0]["image"])[None]
  np.testing.assert_array_equal(tokens[0], tok.encode(first).reshape(-1))


def test_the_tokenizer_refuses_params_without_the_codec_entries():
  setup, params = init_params(small_config())
  with pytest.raises(ValueError, match="'encoder' entry, a 'decoder' entry"):
    image.ImageTokenizer(setup, {"encoder": params["encoder"]})
