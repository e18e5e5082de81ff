"""The GLIDE family (upgen/models/glide.py, glide_unet.py): GLIDE's text conditioning (the
padding embedding, the text keys in every attention block, the pooled token in the timestep
embedding), the loss over examples and captions, guided sampling, its FLOP count against
XLA's, and one train-then-sample run on shapes through the CLI."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from tests import token_data
from upgen.sampling import diffusion
from upgen import families
from upgen.runtime import param_groups
from upgen.data.spec import DataSpec
from upgen.models import glide
from upgen.models import glide_unet

SPEC = DataSpec(text_vocab_size=20, text_pad_id=0, text_mask_id=1, text_bos_id=2,
                text_eos_id=3, text_seq_len=6, image_size=16)


def _config(sample=None, loss=None, **model):
  config = token_data.small_config("glide")
  config.model.update({**dict(channel_mult=(1, 2), attention_resolutions=(8,),
                              diffusion_steps=20), **model})
  config.sample.update(sample or {})
  config.loss.update(loss or {})
  return config


def _setup(sample=None, loss=None, **model):
  return families.build(_config(sample, loss, **model), SPEC)


def _batch(b=4, seed=0):
  return token_data.pixel_batch(b, seed)


def _params(setup, seed=0):
  """Initialized parameters with the zero-initialized output layers made random, so the
  output depends on everything before them."""
  params = nn.unbox(glide.init_variables(setup.model, jax.random.key(seed), _batch())["params"])
  leaves, tree = jax.tree_util.tree_flatten_with_path(params)
  rng = np.random.default_rng(seed)
  out = [jnp.asarray(rng.normal(0, 0.05, x.shape), x.dtype) if not np.any(x) else x
         for _, x in leaves]
  return jax.tree_util.tree_unflatten(tree, out)


def test_caption_conditioning_is_glides():
  setup = _setup()
  params = _params(setup)
  x = jnp.asarray(np.random.default_rng(1).normal(size=(1, 16, 16, 3)), jnp.float32)
  t = jnp.array([7])
  run = lambda ids, valid: np.asarray(setup.model.apply(
      {"params": params}, x, t, jnp.asarray([ids], jnp.int32), jnp.asarray([valid], bool)))
  valid = [1, 1, 0, 0, 0, 0]
  a = run([5, 6, 0, 0, 0, 0], valid)
  assert a.shape == (1, 16, 16, 6)
  # Padding positions hold the learned padding embedding, whatever their ids.
  np.testing.assert_allclose(a, run([5, 6, 9, 9, 9, 9], valid), atol=1e-6)
  # A caption word changes the output, through attention and the pooled embedding.
  assert np.abs(a - run([5, 7, 0, 0, 0, 0], valid)).max() > 1e-4
  # The empty caption (what caption dropout shows) is one input, whatever the ids.
  np.testing.assert_allclose(run([5, 6, 7, 8, 9, 10], [0] * 6), run([0] * 6, [0] * 6),
                             atol=1e-6)
  # The text reaches the image through the prepended keys alone when the pooled path is
  # cut (text_proj zeroed): attention blocks see every text position.
  cut = jax.tree_util.tree_map_with_path(
      lambda p, v: jnp.zeros_like(v) if "text_proj" in param_groups.param_path(p) else v, params)
  run_cut = lambda ids: np.asarray(setup.model.apply(
      {"params": cut}, x, t, jnp.asarray([ids], jnp.int32), jnp.asarray([valid], bool)))
  assert np.abs(run_cut([5, 6, 0, 0, 0, 0]) - run_cut([5, 7, 0, 0, 0, 0])).max() > 1e-4
  assert setup.model_config.out_channels == 6
  assert _setup(loss=dict(loss_type="simple"), learn_sigma=False).model_config.out_channels == 3


def test_loss_examples_captions_and_terms():
  setup = _setup()
  params = _params(setup)
  loss = lambda batch, s=setup: s.loss_fn()(params, batch, jax.random.key(3), train=False,
                                            step=0)
  batch = _batch(4)
  value, metrics = loss(batch)
  assert float(value) == pytest.approx(float(metrics["mse"] + metrics["vb"]), rel=1e-5)
  assert {"mse_q0", "mse_q1", "mse_q2", "mse_q3", "vlb_bpd"} <= set(metrics)
  # An example without an image takes no part: the loss is that of the others, with the
  # same t, noise and caption choices per row.
  no_image = dict(batch, has_image=np.array([True, True, True, False]))
  pixels = batch["pixels"].copy()
  pixels[3] = 255 - pixels[3]
  v1, _ = loss(no_image)
  v2, _ = loss(dict(no_image, pixels=pixels))
  assert float(v1) == pytest.approx(float(v2), rel=1e-6)
  assert abs(float(v1) - float(value)) > 1e-6
  # Caption dropout 1 trains on the empty caption only: the caption ids no longer matter.
  dropped = _setup(loss=dict(caption_dropout=1.0))
  other = dict(batch, text_tokens=np.where(batch["text_mask"], 7, 0).astype(np.int32))
  np.testing.assert_allclose(float(loss(batch, dropped)[0]), float(loss(other, dropped)[0]),
                             rtol=1e-6)
  assert abs(float(loss(batch)[0]) - float(loss(other)[0])) > 1e-7
  # "simple" is the epsilon MSE alone.
  simple = _setup(loss=dict(loss_type="simple"))
  value_s, metrics_s = loss(batch, simple)
  assert float(value_s) == pytest.approx(float(metrics["mse"]), rel=1e-6)
  assert "vb" not in metrics_s
  # min_snr_gamma reweights the loss over t; the logged MSE is the same.
  weighted = _setup(loss=dict(loss_type="simple", min_snr_gamma=1.0))
  value_w, metrics_w = loss(batch, weighted)
  assert float(metrics_w["mse"]) == pytest.approx(float(metrics_s["mse"]), rel=1e-6)
  assert abs(float(value_w) - float(value_s)) > 1e-4


def test_hybrid_needs_the_learned_variance():
  config = token_data.small_config("glide")
  config.model.learn_sigma = False
  with pytest.raises(ValueError, match="learn_sigma"):
    families.build(config, SPEC)
  config.model.learn_sigma = True
  config.model.attention_resolutions = (12,)
  with pytest.raises(ValueError, match="config.model.attention_resolutions"):
    families.build(config, SPEC)
  config.model.attention_resolutions = (8,)
  config.sample.sampler = "plms"
  with pytest.raises(ValueError, match="config.sample.sampler"):
    families.build(config, SPEC)


def test_stratified_timesteps_cover_every_stretch_of_t_once():
  b, num = 8, 1000
  for seed in range(5):
    t_B = np.asarray(glide.sample_timesteps(jax.random.PRNGKey(seed), b, num, "stratified"))
    assert t_B.min() >= 0 and t_B.max() < num
    # Example i sits i stretches of 125 steps after example 0 (wrapping at T): one example in
    # each stretch.
    offsets = ((t_B - t_B[0]) % num) / 125
    np.testing.assert_allclose(offsets, np.arange(b), atol=0.02)
  # Uniform over the T steps either way: the mean of many batches is near (T - 1) / 2.
  draws = jax.vmap(lambda k: glide.sample_timesteps(k, b, num, "stratified"))(
      jax.random.split(jax.random.PRNGKey(0), 2000))
  assert abs(float(np.mean(draws)) - (num - 1) / 2) < 10
  assert np.histogram(np.asarray(draws), bins=10, range=(0, num))[0].min() > 1400
  config = token_data.small_config("glide")
  config.loss.timesteps = "sobol"
  with pytest.raises(ValueError, match="config.loss.timesteps"):
    families.build(config, SPEC)
  config.loss.timesteps = "uniform"
  config.loss.min_snr_gamma = -1.0
  with pytest.raises(ValueError, match="config.loss.min_snr_gamma"):
    families.build(config, SPEC)


def test_image_features_per_res_block_without_the_caption():
  setup = _setup()
  params = _params(setup)
  pixels = _batch(3)["pixels"]
  feats = jax.jit(lambda p, x: glide.image_features(p, x, model=setup.model))(params, pixels)
  # (1, 2) levels x 1 block down, 2 middle, 2 x 2 up: one B x C mean per residual block.
  assert [f.shape for f in feats] == [(3, 16), (3, 32), (3, 32), (3, 32), (3, 32), (3, 32),
                                      (3, 16), (3, 16)]
  again = glide.image_features(params, pixels, model=setup.model)
  np.testing.assert_allclose(again[-1], feats[-1], rtol=1e-4, atol=1e-6)  # Fixed noise.
  changed = pixels.copy()
  changed[1] = 255 - changed[1]
  moved = glide.image_features(params, changed, model=setup.model)
  np.testing.assert_allclose(moved[-1][0], feats[-1][0], rtol=1e-4, atol=1e-6)  # Rows apart.
  assert not np.allclose(moved[-1][1], feats[-1][1])
  assert families.get_family("glide").image_features is glide.image_features


def test_guided_sampling():
  setup = _setup(sample=dict(num_steps=5, guidance_scale=0.0, sampler="ddim"))
  params = _params(setup)
  batch = _batch(2)
  sample = lambda s, rng: np.asarray(jax.jit(s.bind("sample_images"))(
      params, batch["text_tokens"], batch["text_mask"], rng))
  out = sample(setup, jax.random.key(0))
  assert out.shape == (2, 16, 16, 3) and out.dtype == np.uint8
  # Guidance 0 is the conditional model alone (its v output as epsilon at the original
  # t), sampled by the DDIM steps of diffusion.py.
  cfg = setup.model_config
  assert cfg.prediction == "v"
  proc = glide.sampling_process(cfg, setup.sample)
  model_fn = lambda x, t: diffusion.as_epsilon(
      glide.base_process(cfg), setup.model.apply({"params": params}, x, t,
                                                 jnp.asarray(batch["text_tokens"]),
                                                 jnp.asarray(batch["text_mask"])), x, t, "v")
  direct = glide.to_pixels(diffusion.ddim_sample(proc, model_fn, (2, 16, 16, 3),
                                                 jax.random.key(0)))
  np.testing.assert_array_equal(out, np.asarray(direct))
  # DDIM (eta 0) is deterministic given the start noise; guidance changes the images.
  np.testing.assert_array_equal(out, sample(setup, jax.random.key(0)))
  guided = _setup(sample=dict(num_steps=5, guidance_scale=3.0, sampler="ddim"))
  assert np.abs(sample(guided, jax.random.key(0)).astype(int) - out).max() > 0
  # Ancestral sampling over the respaced steps, and unconditional images.
  ddpm = _setup(sample=dict(num_steps=4, sampler="ddpm"))
  assert sample(ddpm, jax.random.key(1)).shape == (2, 16, 16, 3)
  uncond = jax.jit(setup.bind("unconditional_images"), static_argnames="num")(
      params, jax.random.key(2), num=3)
  assert uncond.shape == (3, 16, 16, 3)
  with pytest.raises(ValueError, match="config.sample.num_steps=50 > the model's 20"):
    glide.sampling_process(cfg, glide.GlideSample(num_steps=50))


def test_image_nll_is_the_bound_in_nats():
  setup = _setup(diffusion_steps=4)
  params = _params(setup)
  batch = _batch(2)
  nats = np.asarray(jax.jit(setup.family.image_nll, static_argnames="model")(
      params, batch, model=setup.model))
  assert nats.shape == (2,) and np.all(np.isfinite(nats)) and np.all(nats > 0)
  # The bound is the sum of its terms: prior + each step's KL + the decoder, per example.
  cfg = setup.model_config
  proc = glide.base_process(cfg)
  x0 = glide.to_unit(batch["pixels"])
  dims = 16 * 16 * 3
  total = np.zeros(2)
  for t in range(4):
    t_B = jnp.full((2,), t)
    noise = jax.random.normal(jax.random.fold_in(jax.random.key(0), t), x0.shape)
    xt = diffusion.q_sample(proc, x0, t_B, noise)
    out = setup.model.apply({"params": params}, xt, t_B, batch["text_tokens"],
                            batch["text_mask"])
    out = diffusion.as_epsilon(proc, out, xt, t_B, cfg.prediction)  # The tiny config's v.
    total += np.asarray(diffusion.vlb_bits_per_dim(proc, out, x0, xt, t_B)) * dims * np.log(2)
  abar = proc.alphas_cumprod[-1]
  x0 = np.asarray(x0, np.float64)
  prior = 0.5 * (-1.0 - np.log(1 - abar) + (1 - abar) + abar * x0 ** 2)
  np.testing.assert_allclose(nats, total + prior.sum(axis=(1, 2, 3)), rtol=1e-4)


def test_flop_count_matches_xla():
  """glide_unet.forward_flops (dense convolutions) against XLA's cost analysis, which skips
  the zero padding of 3x3 convolutions at the borders and counts elementwise ops: within 5%
  above ours once ours leaves those taps out too (the dense count, for MFU, keeps them)."""
  config = token_data.small_config("glide")
  spec = DataSpec(text_vocab_size=20, text_pad_id=0, text_seq_len=6, image_size=32)
  setup = families.build(config, spec)
  cfg = setup.model_config
  params = nn.unbox(jax.eval_shape(lambda: glide.init_variables(
      setup.model, jax.random.key(0), setup.dummy_batch(1)))["params"])
  b = 2
  fwd = jax.jit(lambda p, x, t, ids, m: setup.model.apply({"params": p}, x, t, ids, m))
  args = (params, jax.ShapeDtypeStruct((b, 32, 32, 3), jnp.float32),
          jax.ShapeDtypeStruct((b,), jnp.int32), jax.ShapeDtypeStruct((b, 6), jnp.int32),
          jax.ShapeDtypeStruct((b, 6), bool))
  xla = fwd.lower(*args).compile().cost_analysis()
  xla = xla[0] if isinstance(xla, list) else xla
  ours = sum(f for _, f, _ in glide_unet.forward_flops(cfg))
  unpadded = sum(f for _, f, _ in glide_unet.forward_flops(cfg, count_padding=False))
  # XLA also counts the elementwise ops (norms, activations, softmax) that ours leaves out.
  assert unpadded <= xla["flops"] / b <= 1.05 * unpadded
  assert ours > 1.1 * unpadded
  assert glide.train_flops(cfg).total == pytest.approx(3 * ours)


def test_train_then_sample_on_shapes(tmp_path):
  """`upgen train` on pixel records of shapes (no image tokenizer), then `upgen sample`
  from the run's EMA: the loss falls and the samples are written as PNGs."""
  from upgen import cli
  from upgen.datasets import shapes
  from upgen.data import sources
  from upgen.datasets import tokenize
  from upgen.tokenizers import text as text_tok

  images = str(tmp_path / "shapes")
  shapes.generate(images, image_size=16, num_train=64, num_val=16, num_test=0, seed=0)
  captions = [e["caption"] for e in sources.read_captions(os.path.join(images, "train"))]
  text = text_tok.train_bpe(captions, 64, str(tmp_path / "text"))
  data = str(tmp_path / "data")
  tokenize.tokenize_folder({s: sources.ImageFolderSource(os.path.join(images, s), 16)
                            for s in ("train", "val")}, data, text, None, pixels=True)
  work = str(tmp_path / "run")
  small = {k: v for k, v in token_data.SMALL.items()
           if k in token_data.small_config("glide").model}
  args = ["train", "--config", "configs/glide.py:tiny", "--workdir", work,
          f"--config.data.dir={data}", "--config.data.batch_size=16", "--config.train.steps=40",
          "--config.train.log_every=10", "--config.train.sample_every=0",
          "--config.train.progress=False", "--config.train.eval_batches=1",
          "--config.model.channel_mult=(1,2)", "--config.model.attention_resolutions=(8,)",
          "--config.optim.warmup_steps=5", "--config.optim.lr=3e-3",
          "--config.model.diffusion_steps=100",
          *[f"--config.model.{k}={v}" for k, v in small.items()]]
  assert cli.main(args) == 0
  rows = [json.loads(line) for line in open(os.path.join(work, "metrics.jsonl"))]
  mse = [r["mse"] for r in rows if "mse" in r]
  assert mse[-1] < 0.8 * mse[0], mse  # v prediction: its MSE starts near 1.
  assert any("val_ema_loss" in r for r in rows)
  prompts = tmp_path / "prompts.txt"
  prompts.write_text("a red circle\na blue square\n")
  out = str(tmp_path / "samples")
  assert cli.main(["sample", "--workdir", work, "--prompts", str(prompts), "--out", out,
                   "--per-prompt", "2", "--config.sample.num_steps=4",
                   "--config.sample.guidance_scale=1.5"]) == 0
  manifest = [json.loads(line) for line in open(os.path.join(out, "manifest.jsonl"))]
  assert len(manifest) == 4
  from PIL import Image
  first = np.asarray(Image.open(os.path.join(out, manifest[0]["image"])))
  assert first.shape == (16, 16, 3)
  # The variational bound of validation images, in bits per dimension: under the 8 bits of
  # a uniform guess once the model has learned anything.
  from upgen.evaluators import nll
  bound = nll.image_nll(work, "val", num=8, batch_size=8)
  assert 0.5 < bound["bits_per_dim"] < 8.0, bound
  # `upgen demo` on the run: GLIDE's settings on the page, pixels back, no image->text.
  from upgen.tools import demo as demo_lib
  from upgen import inference
  page = demo_lib.Demo(inference.load_run(work), batch_size=2, max_samples=4)
  assert [f.key for f in page.fields] == ["sampler", "num_steps", "eta", "guidance_scale",
                                          "clip_denoised"]
  assert not (page.can_caption or page.can_inpaint)
  drawn = page.generate("a red circle", 3, {"sampler": "ddpm", "num_steps": 4.0}, seed=1)
  assert [x.shape for x in drawn.images] == [(16, 16, 3)] * 3
  # `upgen eval probe` on the run: the UNet's features of the pixels, no codes baseline.
  from upgen.evaluators import probe
  report = str(tmp_path / "probe.json")
  assert probe.main(["--workdir", work, "--data", images, "--label", "color", "--steps", "20",
                     "--baselines", "--json", report]) == 0
  probed = json.load(open(report))
  assert probed["model"]["layers"] == 8 and probed["model"]["dims"] == 16 * 3 + 32 * 5
  assert 0.0 <= probed["model"]["eval_accuracy"] <= 1.0 and probed["num_eval"] > 0
  assert "pixels" in probed and probed["codes"].startswith("not computed")


@pytest.mark.parametrize("variant,params", [("tiny", 3_529_176), ("base", 385_054_790)])
def test_variants_build(variant, params):
  """configs/glide.py's variants build at the resolution they are for; base is the released
  GLIDE base model's size (385M parameters with GLIDE's 50,257-token vocabulary)."""
  from configs import glide as glide_config
  config = glide_config.get_config(variant)
  size, vocab = (32, 128) if variant == "tiny" else (64, 50257)
  spec = DataSpec(text_vocab_size=vocab, text_pad_id=0, text_seq_len=config.data.text_seq_len,
                  image_size=size)
  cfg = families.build(config, spec).model_config
  assert glide_unet.num_params_estimate(cfg) == params


def test_patches_fold_into_channels_and_back():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 8, 8, 6)), jnp.float32)
  folded = glide_unet.space_to_depth(x, 2)
  assert folded.shape == (2, 4, 4, 24)
  # The first folded pixel holds the top-left 2 x 2 patch, row-major, channels together.
  np.testing.assert_array_equal(folded[0, 0, 0], np.concatenate(
      [x[0, 0, 0], x[0, 0, 1], x[0, 1, 0], x[0, 1, 1]]))
  np.testing.assert_array_equal(glide_unet.depth_to_space(folded, 2), x)
  # A patched UNet maps 16 px images to 16 px outputs of 6 channels.
  setup = _setup(patch_size=2, attention_resolutions=(4,))
  assert setup.model_config.resolution == 8
  params = _params(setup)
  out = setup.model.apply({"params": params}, jnp.zeros((1, 16, 16, 3)), jnp.array([3]),
                          jnp.zeros((1, 6), jnp.int32), jnp.zeros((1, 6), bool))
  assert out.shape == (1, 16, 16, 6)
