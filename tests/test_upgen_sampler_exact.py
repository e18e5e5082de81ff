"""The sampler's speed changes (#33 item 3) leave UPGen's samples as they were: the image
alone equals the full sequence with every text key masked, the parameters cast once equal
the casts every layer does, one sort ranks as two did, and so text->image, unconditional and
inpainting tokens equal the old sampler's (one 2B forward with a [PAD] caption, key-masked)."""
import dataclasses

from flax import linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import token_data
from upgen import families
from upgen.data.spec import DataSpec
from upgen.models import upgen
from upgen.sampling import maskgit
from upgen.sampling import upgen_sampler

LI, LT, VI, VT, PAD, MASK, B = 16, 6, 8, 20, 0, 1, 4
SPEC = DataSpec(text_vocab_size=VT, text_pad_id=PAD, text_mask_id=MASK, text_seq_len=LT,
                image_vocab_size=VI, image_grid=(4, 4))


def _setup(**keys):
  config = token_data.small_config("upgen", 2, **keys)
  setup = families.build(config, SPEC)
  rng = np.random.default_rng(0)
  lengths = rng.integers(1, LT + 1, B)
  mask = np.arange(LT)[None] < lengths[:, None]
  text = np.where(mask, rng.integers(2, VT, (B, LT)), PAD).astype(np.int32)
  image = rng.integers(0, VI, (B, LI)).astype(np.int32)
  batch = dict(image_tokens=image, text_tokens=text, text_mask=mask,
               has_image=np.ones(B, bool), has_text=np.ones(B, bool))
  params = nn.unbox(upgen.init_variables(setup.model, jax.random.key(1), batch)["params"])
  # Away from initialization (zero biases, unit norms), so every parameter matters.
  leaves, tree = jax.tree.flatten(params)
  keys_ = jax.random.split(jax.random.key(2), len(leaves))
  params = jax.tree.unflatten(tree, [x + 0.05 * jax.random.normal(k, x.shape, x.dtype)
                                     for x, k in zip(leaves, keys_)])
  return setup, params, batch


def _old_decode(params, image_BxLi, known_BxLi, text_BxLt, text_mask_BxLt, rng, *, model,
                settings):
  """upgen_sampler._decode_image before #33 item 3: float32-stored parameters cast at every
  use, cond and uncond as one 2B forward, the uncond caption all [PAD] and key-masked."""
  cfg = model.config
  text_mask_BxLt = text_mask_BxLt.astype(bool)
  apply = lambda i, t, m: model.apply({"params": params}, i, t, m, jnp.ones(i.shape[:1], bool),
                                      train=False)[0]

  def guided(image):
    both = apply(jnp.concatenate([image, image]),
                 jnp.concatenate([text_BxLt, jnp.full_like(text_BxLt, cfg.text_pad_id)]),
                 jnp.concatenate([text_mask_BxLt, jnp.zeros_like(text_mask_BxLt)]))
    return jnp.split(both, 2, axis=0)

  return maskgit.decode(
      lambda image: apply(image, text_BxLt, text_mask_BxLt), image_BxLi, known_BxLi,
      cfg.image_mask_id, rng, settings.num_steps, settings.schedule, settings.temperature,
      settings.choice_temperature, settings.guidance_scale, guided,
      settings.temperature_schedule)


def test_one_sort_ranks_as_two_with_ties_zeros_and_infinities():
  rng = np.random.default_rng(0)
  values = rng.choice([-np.inf, -1.5, -0.0, 0.0, 0.25, 2.0, np.inf], (8, 33)).astype(np.float32)
  values[:4] += rng.normal(size=(4, 33)).astype(np.float32) * (rng.random((4, 33)) < 0.5)
  two_sorts = jnp.argsort(jnp.argsort(values, axis=-1, stable=True), axis=-1, stable=True)
  np.testing.assert_array_equal(maskgit.rank_BxL(jnp.asarray(values)), two_sorts)
  assert sorted(np.asarray(maskgit.rank_BxL(jnp.asarray(values)))[0]) == list(range(33))


@pytest.mark.parametrize("scan_layers", [False, True])
def test_image_alone_is_the_sequence_with_every_text_key_masked(scan_layers):
  setup, params, batch = _setup(scan_layers=scan_layers)
  model, image = setup.model, batch["image_tokens"]
  text = np.full((B, LT), PAD, np.int32)
  full = model.apply({"params": params}, image, text, np.zeros((B, LT), bool), train=False)
  alone = model.apply({"params": params}, image, text[:, :0], np.zeros((B, 0), bool),
                      train=False)
  assert alone[1].shape == (B, 0, VT)
  np.testing.assert_array_equal(alone[0], full[0])
  with pytest.raises(ValueError, match="text length 0"):
    model.apply({"params": params}, image, text[:, :2], np.zeros((B, 2), bool), train=False)


def test_parameters_cast_once_give_the_same_bf16_logits():
  setup, params, batch = _setup(dtype="bfloat16")
  cast = upgen_sampler.compute_dtype_params(params, jnp.bfloat16)
  dtypes = {"/".join(k.key for k in path): x.dtype
            for path, x in jax.tree_util.tree_leaves_with_path(cast)}
  assert dtypes["encoder/layers_0/mlp/wi/kernel"] == jnp.bfloat16
  assert dtypes["image_embed/embedding"] == jnp.bfloat16
  for kept in ("encoder/layers_0/mlp/wi/bias", "final_norm/LayerNorm_0/scale", "type_embed"):
    assert dtypes[kept] == jnp.float32, kept
  args = (batch["image_tokens"], batch["text_tokens"], batch["text_mask"])
  apply = jax.jit(lambda p: setup.model.apply({"params": p}, *args, train=False))
  for got, want in zip(apply(cast), apply(params)):
    np.testing.assert_array_equal(got, want)
  # Float32 compute: nothing to cast.
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(
      upgen_sampler.compute_dtype_params(params, jnp.float32)))


@pytest.mark.parametrize("keys,settings", [
    ({}, {}),  # The quickstart's tiny sampling: argmax tokens, guidance 1.
    ({"scan_layers": True}, {"temperature": 1.0, "guidance_scale": 2.0}),
    ({"dtype": "bfloat16"}, {"temperature": 1.0, "guidance_scale": 2.0}),
])
def test_samples_equal_the_old_samplers(keys, settings):
  setup, params, batch = _setup(**keys)
  model = setup.model
  settings = dataclasses.replace(setup.sample, **settings)
  assert setup.sample.guidance_scale > 0
  text, mask = batch["text_tokens"], batch["text_mask"]
  old = jax.jit(_old_decode, static_argnames=("model", "settings"))
  zeros = np.zeros((B, LI), np.int32)
  for seed in range(3):
    rng = jax.random.key(seed)
    new = upgen_sampler.text_to_image(params, model, text, mask, rng, settings)
    np.testing.assert_array_equal(
        new, old(params, zeros, zeros.astype(bool), text, mask, rng, model=model,
                 settings=settings))
    known = np.arange(LI)[None].repeat(B, 0) < LI // 2
    np.testing.assert_array_equal(
        upgen_sampler.inpaint(params, model, batch["image_tokens"], known, text, mask, rng,
                              settings),
        old(params, batch["image_tokens"], known, text, mask, rng, model=model,
            settings=settings))
    unguided = dataclasses.replace(settings, guidance_scale=0.0)
    np.testing.assert_array_equal(
        upgen_sampler.unconditional_image(params, model, B, rng, settings),
        old(params, zeros, zeros.astype(bool), np.full((B, LT), PAD, np.int32),
            np.zeros((B, LT), bool), rng, model=model, settings=unguided))
