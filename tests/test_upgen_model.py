"""Tests for upgen/models/upgen.py (model, masking, loss) and upgen/sampling/upgen_sampler.py."""
import dataclasses
import functools
import math
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

from tests import token_data
from upgen import families
from upgen.data.spec import DataSpec
from upgen.models import positions
from upgen.models import upgen
from upgen.sampling import upgen_sampler
from upgen.sampling.settings import SampleSettings
from upgen.train import preview as preview_lib

LI, LT, VI, VT, PAD, MASK = 16, 6, 8, 20, 0, 1
SPEC = DataSpec(text_vocab_size=VT, text_pad_id=PAD, text_mask_id=MASK, text_seq_len=LT,
                image_vocab_size=VI, image_grid=(4, 4))


def _config(num_layers=1, **keys):
  return token_data.small_config("upgen", num_layers, **keys)


def _model(spec=SPEC, **keys):
  return families.build(_config(**keys), spec).model


def _loss(**keys):
  return upgen.loss_config(_config(**keys).loss, None)


def _batch(kinds, seed=0):
  """kinds: string of p (paired), i (image-only), t (text-only), one char per example."""
  rng = np.random.default_rng(seed)
  b = len(kinds)
  lengths = rng.integers(1, LT + 1, b)
  text_mask = np.arange(LT)[None] < lengths[:, None]
  has_image = np.array([k in "pi" for k in kinds])
  has_text = np.array([k in "pt" for k in kinds])
  text_mask &= has_text[:, None]
  text = np.where(text_mask, rng.integers(2, VT, (b, LT)), PAD).astype(np.int32)
  image = np.where(has_image[:, None], rng.integers(0, VI, (b, LI)), 0).astype(np.int32)
  return dict(image_tokens=image, text_tokens=text, text_mask=text_mask, has_image=has_image,
              has_text=has_text)


def _init(model, batch):
  return nn.unbox(jax.jit(upgen.init_variables, static_argnums=0)(model, jax.random.key(0),
                                                                  batch)["params"])


def test_shapes_flops_and_config_errors():
  setup = families.build(_config(num_layers=2), SPEC)
  model = setup.model
  batch = setup.dummy_batch(3)
  assert {k: v.shape for k, v in batch.items()} == {
      "image_tokens": (3, LI), "text_tokens": (3, LT), "text_mask": (3, LT),
      "has_image": (3,), "has_text": (3,)}
  params = jax.eval_shape(lambda r: upgen.init_variables(model, r, batch),
                          jax.random.key(0))["params"]
  assert nn.unbox(params)["image_embed"]["embedding"].shape == (128, 32)  # VI + 1, padded.
  assert set(nn.unbox(params)["encoder"]) == {"layers_0", "layers_1"}
  image_logits, text_logits = jax.eval_shape(
      lambda p: model.apply({"params": p}, batch["image_tokens"], batch["text_tokens"],
                            batch["text_mask"]), nn.unbox(params))
  assert (image_logits.shape, text_logits.shape) == ((3, LI, VI), (3, LT, VT))
  e, m, length = 32, 64, LI + LT
  want = 6 * 2 * (4 * e * e + 2 * e * m) * length + 12 * 2 * length ** 2 * e \
      + 6 * e * (LI * VI + LT * VT)
  assert upgen.FAMILY.train_flops(setup.model_config).total == want
  # Sizes come from the data: a spec without them, or a config that sets them, is an error.
  with pytest.raises(ValueError, match="has no image tokenizer"):
    _model(spec=DataSpec(text_vocab_size=VT, text_seq_len=LT))
  with pytest.raises(ValueError, match="text_mask_id=20 is outside"):
    _model(spec=dataclasses.replace(SPEC, text_mask_id=VT))
  c = _config()
  c.model.image_vocab_size = VI
  with pytest.raises(ValueError, match="config.model.image_vocab_size: set in the config, but "
                                       "it comes from the data"):
    families.build(c, SPEC)
  c = _config()
  c.model.nope, c.model.neither = 1, 2
  with pytest.raises(ValueError, match=r"config.model.neither, config.model.nope: unknown keys"):
    families.build(c, SPEC)
  with pytest.raises(ValueError, match="config.loss.mask_schedule='uniform'"):
    _loss(mask_schedule="uniform")
  with pytest.raises(ValueError, match="image_seq_len=15 is not a grid of image_grid_width=4"):
    dataclasses.replace(setup.model_config, image_seq_len=15)
  with pytest.raises(ValueError, match="config.model.position_embedding='3d'"):
    _model(position_embedding="3d")
  # "2d": image token (r, c) gets row r's and column c's sin-cos; "1d": one joint sequence.
  pos = setup.model_config.positions()
  assert pos.shape == (LI + LT, 32)
  side = 4  # Columns of the 4x4 grid.
  np.testing.assert_array_equal(pos[1, :16], pos[0, :16])  # Same row, other column.
  np.testing.assert_array_equal(pos[side, 16:], pos[0, 16:])  # Same column, other row.
  assert not np.allclose(pos[side, :16], pos[0, :16])
  np.testing.assert_array_equal(pos[LI:], positions.sinusoidal_1d(LT, 32))
  pos_1d = _model(position_embedding="1d").config.positions()
  np.testing.assert_array_equal(pos_1d, positions.sinusoidal_1d(LI + LT, 32))


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_mask_sampling_distribution(schedule):
  batch = _batch("p" * 1500 + "i" * 500 + "t" * 500 + "n", seed=1)
  settings = _loss(mask_schedule=schedule, paired_masking="joint")
  masks = jax.jit(upgen.sample_masks, static_argnums=2)(jax.random.key(0), batch, settings)
  image_m, text_m = (np.asarray(x) for x in masks)
  valid_i = np.broadcast_to(batch["has_image"][:, None], image_m.shape)
  valid_t = batch["text_mask"]
  assert not (image_m & ~valid_i).any() and not (text_m & ~valid_t).any()
  n_valid = valid_i.sum(1) + valid_t.sum(1)
  n_masked = image_m.sum(1) + text_m.sum(1)
  assert (n_masked[n_valid > 0] >= 1).all() and n_masked[-1] == 0  # "n": nothing valid.
  text_only = slice(2000, 2500)
  np.testing.assert_array_equal(n_masked[text_only], np.ceil(0.15 * n_valid[text_only]))
  # Mean masked fraction of paired / image-only examples vs. the ratio law, by Monte Carlo.
  u = np.random.default_rng(0).uniform(size=20000)
  r = 1.0 - u if schedule == "linear" else np.cos(math.pi / 2 * u)
  for rows in (slice(0, 1500), slice(1500, 2000)):
    n = n_valid[rows]
    want = np.mean([np.mean(np.ceil(r * k) / k) for k in n])
    frac = n_masked[rows] / n
    assert abs(frac.mean() - want) < 4 * frac.std() / np.sqrt(len(n)), (rows, want)


@pytest.mark.parametrize("text_pads", ["masked", "tokens"])
def test_independent_masking_keeps_whole_captions_for_text_to_image(text_pads):
  batch = _batch("p" * 2000 + "i" * 300 + "t" * 300, seed=4)
  settings = _loss(paired_masking="independent", mask_schedule="linear",
                   paired_text_mask_prob=1.0, caption_task_keeps_image=False)
  sample = jax.jit(upgen.sample_masks, static_argnums=(2, 3))
  masks = sample(jax.random.key(1), batch, settings, text_pads)
  image_m, text_m = (np.asarray(x) for x in masks)
  # Text slots: the real tokens, or (text_pads="tokens") every position of a row with text.
  slots = batch["text_mask"] if text_pads == "masked" else np.broadcast_to(
      batch["has_text"][:, None], batch["text_mask"].shape)
  assert not (text_m & ~slots).any() and not image_m[2300:].any()
  paired, image_only, text_only = slice(0, 2000), slice(2000, 2300), slice(2300, 2600)
  # Images: ceil(r * Li) of r ~ U(0, 1] on their own, whatever the caption drew.
  linear_fraction = lambda n: np.mean(np.ceil(
      (1 - np.random.default_rng(0).uniform(size=20000)) * n) / n)
  n_img = image_m[paired].sum(1)
  assert n_img.min() >= 1 and abs(n_img.mean() / LI - linear_fraction(LI)) < 0.03
  assert (image_m[image_only].sum(1) >= 1).all() and not text_m[image_only].any()
  # Captions of paired examples: their own ratio of their slots, down to all of them
  # (the image->text task), independent of the image's draw.
  n_txt, n_slots = text_m[paired].sum(1), slots[paired].sum(1)
  assert n_txt.min() >= 1 and (n_txt == n_slots).mean() > 0.1
  want = np.mean([linear_fraction(n) for n in n_slots[:200]])
  assert abs(np.mean(n_txt / n_slots) - want) < 0.03
  assert abs(np.corrcoef(n_img, n_txt / n_slots)[0, 1]) < 0.1
  np.testing.assert_array_equal(text_m[text_only].sum(1), np.ceil(0.15 * slots[text_only].sum(1)))
  # By default each paired example does one sampling task: image->text (caption masked,
  # image whole) or text->image (image masked, caption whole).
  settings = _loss(paired_masking="independent", paired_text_mask_prob=0.5)
  image_m, text_m = (np.asarray(x) for x in sample(jax.random.key(1), batch, settings,
                                                    text_pads))
  caption_task = text_m[paired].any(1)
  assert 0.45 < caption_task.mean() < 0.55
  assert not image_m[paired][caption_task].any() and image_m[paired][~caption_task].any(1).all()
  assert image_m[image_only].any(1).all()  # No caption: the image is masked as always.
  with pytest.raises(ValueError, match="config.loss.paired_masking"):
    _loss(paired_masking="both")


def test_paired_text_mask_prob_picks_the_captions_that_are_masked():
  batch = _batch("p" * 3000, seed=6)
  settings = lambda prob: _loss(paired_masking="independent", paired_text_mask_prob=prob,
                               caption_task_keeps_image=False)
  sample = jax.jit(upgen.sample_masks, static_argnums=2)
  for prob in (0.0, 0.1, 1.0):
    image_m, text_m = (np.asarray(x) for x in sample(jax.random.key(3), batch, settings(prob)))
    n_txt = text_m.sum(1)
    # A caption picked for the task loses at least one token; the others none.
    assert abs(np.mean(n_txt > 0) - prob) < 0.02, prob
    assert (image_m.sum(1) >= 1).all()  # caption_task_keeps_image=False: images masked too.
  # The image masks do not depend on the caption draw.
  np.testing.assert_array_equal(sample(jax.random.key(3), batch, settings(0.0))[0],
                                sample(jax.random.key(3), batch, settings(0.5))[0])
  with pytest.raises(ValueError, match="config.loss.paired_text_mask_prob"):
    _loss(paired_text_mask_prob=-0.1)


ZERO_LAYER = _model(num_layers=0)


@jax.jit
@functools.partial(jax.value_and_grad, has_aux=True)
def _zero_layer_loss(params, batch, masks, weights_4):
  """masked_loss of a 0-layer model (each position's logits depend on its own input only),
  with the four loss weights traced so that one compilation serves every weighting (so the
  settings are a plain namespace: MaskingLoss checks its values)."""
  names = ("paired_image_weight", "paired_text_weight", "unpaired_image_weight",
           "unpaired_text_weight")
  settings = types.SimpleNamespace(**dict(zip(names, weights_4)), logits_capacity=0.0,
                                   logits_chunks=1)
  return upgen.masked_loss(params, batch, masks, jax.random.key(0), model=ZERO_LAYER,
                           settings=settings, train=False)


def test_loss_only_on_masked_positions_and_padding_excluded():
  batch = _batch("ppit", seed=2)
  params = _init(ZERO_LAYER, batch)
  loss = lambda p, b, m: _zero_layer_loss(p, b, m, jnp.ones(4))[0]
  image_m = np.zeros((4, LI), bool)
  image_m[:3, ::3] = True
  text_m = batch["text_mask"] & (np.arange(LT)[None] % 2 == 0)
  text_m[2] = False
  masks = (image_m, text_m)
  base, metrics = loss(params, batch, masks)
  assert metrics["num_masked_image"] == image_m.sum()
  assert metrics["num_masked_text"] == text_m.sum()

  def changed(key, row, col, value):
    b = {k: v.copy() for k, v in batch.items()}
    b[key][row, col] = value
    return float(loss(params, b, masks)[0])

  unmasked_col = 1  # Column 1 of the image is never masked.
  assert changed("image_tokens", 0, unmasked_col, (batch["image_tokens"][0, 1] + 1) % VI) \
      == pytest.approx(float(base), rel=1e-6)
  pad_row = int(np.argmin(batch["text_mask"][:, -1]))
  assert not batch["text_mask"][pad_row, -1]
  assert changed("text_tokens", pad_row, LT - 1, 7) == pytest.approx(float(base), rel=1e-6)
  assert changed("image_tokens", 0, 0, (batch["image_tokens"][0, 0] + 1) % VI) \
      != pytest.approx(float(base), rel=1e-4)


def test_loss_weights_control_each_term():
  batch = _batch("ppit", seed=3)
  rng = np.random.default_rng(3)
  masks = (rng.random((4, LI)) < 0.5, batch["text_mask"] & (rng.random((4, LT)) < 0.5))
  masks[1][:, 0] = batch["text_mask"][:, 0]  # Every text-bearing example has a masked token.
  params = _init(ZERO_LAYER, batch)
  terms = ("loss_image", "loss_text", "loss_unpaired_image", "loss_unpaired_text")
  # (weights, text head gets gradient, image head gets gradient)
  cases = [((1.0, 0.1, 1.0, 0.01), True, True), ((1.0, 0.0, 1.0, 0.0), False, True),
           ((0.0, 0.0, 0.0, 0.5), True, False), ((0.0, 0.3, 0.0, 0.0), True, False)]
  for weights, text_grad, image_grad in cases:
    (total, m), grads = _zero_layer_loss(params, batch, masks, jnp.array(weights))
    assert all(float(m[k]) > 0 for k in terms)
    want = sum(w * float(m[k]) for w, k in zip(weights, terms))
    assert float(total) == pytest.approx(want, rel=1e-5)
    assert (float(optax.tree.norm(grads["text_head"])) > 0) == text_grad, weights
    assert (float(optax.tree.norm(grads["image_head"])) > 0) == image_grad, weights


@pytest.fixture(scope="module")
def overfit():
  """A 1-layer model trained for 1000 Adam steps on 4 paired examples (one scanned jit), with
  the tiny recipe's independent masking: half the captions masked for image->text. The
  captions differ in length, but with text_pads="tokens" the length does not leak through
  the attention mask: the model must tell the examples apart by their image or caption."""
  # Memorizing random ids with a 1-layer, width-32 model goes faster from small embeddings.
  c = _config(mask_schedule="cosine", paired_masking="independent", paired_text_mask_prob=0.5,
              paired_text_weight=1.0, embed_init_std=0.02)
  setup = families.build(c, SPEC)
  model = setup.model
  batch = _batch("pppp", seed=4)
  lengths = np.array([4, 5, 3, 6])  # Captions of disjoint token sets.
  batch["text_mask"] = np.arange(LT)[None] < lengths[:, None]
  tokens = np.random.default_rng(4).permutation(np.arange(2, VT))[:lengths.sum()]
  batch["text_tokens"] = np.full((4, LT), PAD, np.int32)
  batch["text_tokens"][batch["text_mask"]] = tokens
  opt = optax.flatten(optax.adam(3e-3))

  # The run itself is tiny: skipping LLVM optimization halves the compile time on CPU.
  @functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})
  def train(params):
    def step(carry, rng):
      params, opt_state = carry
      grad_fn = jax.value_and_grad(upgen.loss_fn, has_aux=True)
      (loss, _), grads = grad_fn(params, batch, rng, model=model, settings=setup.loss,
                                 train=True)
      updates, opt_state = opt.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), loss
    rngs = jax.random.split(jax.random.key(1), 1000)
    (params, _), losses = jax.lax.scan(step, (params, opt.init(params)), rngs)
    return params, losses

  params, losses = train(_init(model, batch))
  return dict(setup=dataclasses.replace(setup, sample=SampleSettings(temperature=0.0)),
              model=model, batch=batch, params=params, losses=np.asarray(losses))


def test_overfit_learns_both_directions(overfit):
  setup, batch, params, losses = (overfit[k] for k in ("setup", "batch", "params", "losses"))
  assert losses[-50:].mean() < 0.5 * losses[:10].mean(), (losses[:10], losses[-50:])
  # The sampling tasks, scored: every image token masked beside the whole caption
  # (text->image), every text slot masked beside the whole image (image->text).
  tasks = {"image": (np.ones((4, LI), bool), np.zeros((4, LT), bool)),
           "text": (np.zeros((4, LI), bool), upgen.text_slots(batch["text_mask"], "tokens"))}
  for name, masks in tasks.items():
    _, m = upgen.masked_loss(params, batch, masks, jax.random.key(0), model=setup.model,
                             settings=setup.loss, train=False)
    assert float(m[f"loss_{name}"]) < 0.15 * np.log(VI if name == "image" else VT), (name, m)


def test_text_to_image_recovers_memorized_tokens(overfit):
  setup, model, batch, params = (overfit[k] for k in ("setup", "model", "batch", "params"))
  for scale in (0.0, 1.0):
    settings = dataclasses.replace(setup.sample, guidance_scale=scale)
    out = np.asarray(upgen_sampler.text_to_image(params, model, batch["text_tokens"],
                                                 batch["text_mask"], jax.random.key(0), settings))
    assert out.dtype == np.int32 and out.shape == (4, LI)
    assert ((out >= 0) & (out < VI)).all()
    assert (out == batch["image_tokens"]).mean() >= 0.9, (scale, out, batch["image_tokens"])
  # The trainer's preview is the family's sampler on the batch's captions.
  setup = dataclasses.replace(setup, sample=settings)
  preview = preview_lib.preview_fn(setup)(params, batch, jax.random.key(0))
  np.testing.assert_array_equal(preview, out)


def test_inpaint_unconditional_image_to_text_and_key_masks(overfit):
  setup, model, batch, params = (overfit[k] for k in ("setup", "model", "batch", "params"))
  settings = dataclasses.replace(setup.sample, guidance_scale=1.0)
  known = np.zeros((4, LI), bool)
  known[:, :LI // 2] = True
  start = np.where(known, batch["image_tokens"], (batch["image_tokens"] + 1) % VI)
  out = np.asarray(upgen_sampler.inpaint(params, model, start, known, batch["text_tokens"],
                                         batch["text_mask"], jax.random.key(2), settings))
  np.testing.assert_array_equal(out[known], start[known])
  assert (out == batch["image_tokens"]).mean() >= 0.9
  uncond = np.asarray(upgen_sampler.unconditional_image(params, model, 4, jax.random.key(3),
                                                        settings))
  assert uncond.shape == (4, LI) and ((uncond >= 0) & (uncond < VI)).all()
  text = np.asarray(upgen_sampler.image_to_text(params, model, batch["image_tokens"],
                                                jax.random.key(4), settings, text_length=4))
  assert text.shape == (4, LT) and (text[:, 4:] == PAD).all() and (text != MASK).all()
  with pytest.raises(ValueError, match="text_length"):
    upgen_sampler.image_to_text(params, model, batch["image_tokens"], jax.random.key(4),
                                settings, text_length=LT + 1)
  # Text padding is read with text_pads="tokens" (this model) and kept out of attention with
  # "masked" (the same parameters); the image of a text-only example always is.
  masked_model = upgen.UPGen(dataclasses.replace(model.config, text_pads="masked"))
  b2 = {k: v.copy() for k, v in batch.items()}
  b2["text_tokens"] = np.where(batch["text_mask"], batch["text_tokens"], 9)
  b2["has_image"][3] = False
  b3 = {k: v.copy() for k, v in b2.items()}
  b3["image_tokens"][3] = (b3["image_tokens"][3] + 1) % VI
  for m in (model, masked_model):
    forward = jax.jit(lambda b, m=m: m.apply({"params": params}, b["image_tokens"],
                                             b["text_tokens"], b["text_mask"], b["has_image"]))
    (i1, _), (i2, t2), (i3, t3) = forward(batch), forward(b2), forward(b3)
    pads_read = np.abs(np.asarray(i1[:3] - i2[:3])).max() > 1e-3
    assert pads_read == (m.config.text_pads == "tokens")
    np.testing.assert_allclose(t2[3], t3[3], atol=1e-5)
    assert np.abs(np.asarray(i2[3] - i3[3])).max() > 1e-3  # Queries still see their own input.


def test_image_to_text_writes_the_memorized_captions_at_their_lengths(overfit):
  """The 4 memorized images get their own captions back, each at its own length (3 to 6
  tokens, then [PAD]s), from every text position masked: what `upgen sample --captions-for`
  does."""
  setup, model, batch, params = (overfit[k] for k in ("setup", "model", "batch", "params"))
  family_sampler = jax.jit(setup.bind("caption_images"))  # text_steps 4, as configured.
  for text in (family_sampler(params, batch["image_tokens"], jax.random.key(5)),
               upgen_sampler.image_to_text(params, model, batch["image_tokens"],
                                           jax.random.key(5),
                                           dataclasses.replace(setup.sample, text_steps=LT))):
    for row, want, mask in zip(np.asarray(text), batch["text_tokens"], batch["text_mask"]):
      assert row.tolist() == want.tolist(), (row, want)
      assert (row[~mask] == PAD).all()
  masked = dataclasses.replace(model.config, text_pads="masked")
  with pytest.raises(ValueError, match="image->text needs config.model.text_pads='tokens'"):
    upgen_sampler.image_to_text(params, upgen.UPGen(masked), batch["image_tokens"],
                                jax.random.key(5), setup.sample)


def test_raster_image_nll_is_the_one_token_per_step_factorization(overfit):
  model, batch, params = (overfit[k] for k in ("model", "batch", "params"))
  nll = np.asarray(upgen_sampler.raster_image_nll(
      params, batch["image_tokens"], batch["text_tokens"], batch["text_mask"], model=model))
  # The same sum, one forward per position, written plainly.
  mask_id, want = model.config.image_mask_id, np.zeros(4)
  for i in range(LI):
    image = np.where(np.arange(LI)[None] < i, batch["image_tokens"], mask_id)
    logits = model.apply({"params": params}, image, batch["text_tokens"], batch["text_mask"],
                         np.ones(4, bool))[0]
    logp = np.asarray(jax.nn.log_softmax(logits[:, i]))
    want -= logp[np.arange(4), batch["image_tokens"][:, i]]
  np.testing.assert_allclose(nll, want, rtol=1e-4)
  # The memorized images are likely; the same images under the wrong captions are not.
  swapped = np.asarray(upgen_sampler.raster_image_nll(
      params, batch["image_tokens"], batch["text_tokens"][::-1], batch["text_mask"][::-1],
      model=model))
  assert nll.max() / LI < 0.3 and (swapped > nll + LI * 0.5).all(), (nll, swapped)


def test_a_run_captions_only_where_its_task_mix_trained_image_to_text():
  loss = upgen.MaskingLoss
  assert upgen.caption_trained(loss(paired_masking="joint", paired_text_mask_prob=0.0))
  assert upgen.caption_trained(loss(paired_masking="independent", paired_text_mask_prob=0.1))
  assert not upgen.caption_trained(loss(paired_masking="independent",
                                        paired_text_mask_prob=0.0))
