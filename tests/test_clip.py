"""The CLIP scorer family (upgen/models/clip.py): its loss is CLIP's symmetric contrastive
cross-entropy over the batch, its caption features ignore padding and end at [EOS], and the
learned temperature is capped."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from tests import token_data
from upgen import families
from upgen.data.spec import DataSpec
from upgen.models import clip

SPEC = DataSpec(text_vocab_size=20, text_pad_id=0, text_mask_id=1, text_bos_id=2,
                text_eos_id=3, text_seq_len=6, image_size=16)


def _setup(**model):
  config = token_data.small_config("clip", 2)
  config.model.update({**dict(patch_size=4, vision_layers=2, vision_width=32, vision_heads=2,
                              vision_mlp_dim=64, embed_dim=16), **model})
  return families.build(config, SPEC)


def _batch(b=4, seed=0):
  return token_data.pixel_batch(b, seed)


def test_loss_is_clips_symmetric_cross_entropy():
  setup = _setup()
  batch = _batch(5)
  params = nn.unbox(clip.init_variables(setup.model, jax.random.key(0), batch)["params"])
  params["logit_scale"] = jnp.asarray(np.log(20.0), jnp.float32)
  loss, metrics = setup.loss_fn()(params, batch, jax.random.key(1), train=False, step=0)
  image, text, _ = setup.model.apply({"params": params}, batch["pixels"],
                                     batch["text_tokens"], batch["text_mask"])
  image = np.asarray(image, np.float64)
  text = np.asarray(text, np.float64)
  image /= np.linalg.norm(image, axis=1, keepdims=True)
  text /= np.linalg.norm(text, axis=1, keepdims=True)
  logits = 20.0 * image @ text.T
  ce = lambda l: np.mean(np.log(np.exp(l).sum(1)) - np.diag(l))
  np.testing.assert_allclose(float(loss), (ce(logits) + ce(logits.T)) / 2, rtol=1e-5)
  assert metrics["temperature"] == pytest.approx(20.0)
  # Examples without a pair take no part: the loss is that of the others alone.
  partial = dict(batch, has_text=np.array([True, True, True, False, True]))
  keep = [0, 1, 2, 4]
  sub = {k: (v[keep] if np.ndim(v) else v) for k, v in batch.items()}
  np.testing.assert_allclose(
      float(setup.loss_fn()(params, partial, jax.random.key(1), train=False, step=0)[0]),
      float(setup.loss_fn()(params, sub, jax.random.key(1), train=False, step=0)[0]), rtol=1e-5)
  # The temperature is capped at config.loss.max_scale.
  params["logit_scale"] = jnp.asarray(10.0, jnp.float32)
  _, metrics = setup.loss_fn()(params, batch, jax.random.key(1), train=False, step=0)
  assert metrics["temperature"] == pytest.approx(100.0)


def test_one_token_swaps_are_one_token_away_from_a_caption_of_the_batch():
  text = np.array([[5, 6, 7, 8, 0], [5, 9, 7, 8, 0], [5, 6, 7, 10, 0], [5, 6, 7, 8, 0],
                   [11, 12, 0, 0, 0]], np.int32)
  valid = text > 0
  negs, ok = clip.one_token_swaps(jax.random.key(3), jnp.asarray(text), jnp.asarray(valid), 16)
  negs, ok = np.asarray(negs), np.asarray(ok)
  assert negs.shape == (5, 16, 5) and ok.shape == (5, 16)
  # The last caption has no other caption of its length: its rows are copies, not negatives.
  assert not ok[4].any() and (negs[4] == text[4]).all()
  for i in range(4):
    assert ok[i].all()
    for neg in negs[i]:
      (at,) = np.nonzero(neg != text[i])  # Exactly one token changed ...
      # ... to the token a caption of the same length has there.
      assert any(text[j][at[0]] == neg[at[0]] for j in range(4) if j != i)
      assert (neg[~valid[i]] == 0).all()
  # Every other caption's differing token is drawn (4 draws x 16 over 2-3 choices).
  assert {tuple(n) for n in negs[0]} == {(5, 9, 7, 8, 0), (5, 6, 7, 10, 0)}


def test_hard_negatives_add_image_to_text_logits():
  def build(k):
    config = token_data.small_config("clip", 1)
    config.model.update(dict(patch_size=8, vision_layers=1, vision_width=16, vision_heads=2,
                             vision_mlp_dim=32, embed_dim=8))
    config.loss.hard_negatives = k
    return families.build(config, SPEC)
  setup, hard_setup = build(0), build(2)
  batch = _batch(6)
  batch["text_mask"] = np.ones_like(batch["text_mask"])  # Every caption of one length.
  batch["text_tokens"] = np.where(batch["text_mask"], np.maximum(batch["text_tokens"], 4), 0)
  params = nn.unbox(clip.init_variables(setup.model, jax.random.key(0), batch)["params"])
  loss_0, metrics_0 = setup.loss_fn()(params, batch, jax.random.key(1), train=False, step=0)
  loss_2, metrics_2 = hard_setup.loss_fn()(params, batch, jax.random.key(1), train=False,
                                           step=0)
  # More negatives in the image -> text softmax: a larger loss, the same in-batch accuracy.
  assert float(loss_2) > float(loss_0)
  assert metrics_2["acc_image_to_text"] == metrics_0["acc_image_to_text"]
  assert 0.0 <= float(metrics_2["acc_hard_negatives"]) <= 1.0
  assert "acc_hard_negatives" not in metrics_0
  grads = jax.grad(lambda p: hard_setup.loss_fn()(p, batch, jax.random.key(1), train=True,
                                                   step=0)[0])(params)
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))


def test_caption_features_end_at_eos_and_ignore_padding():
  setup = _setup()
  cfg = setup.model_config
  batch = _batch(2)
  params = nn.unbox(clip.init_variables(setup.model, jax.random.key(0), batch)["params"])
  ids, valid = clip.text_inputs(np.array([[5, 6, 0, 0, 0, 0]]), np.array([[1, 1, 0, 0, 0, 0]],
                                                                          bool), cfg)
  assert np.asarray(ids).tolist() == [[2, 5, 6, 3, 0, 0, 0, 0]]  # [BOS] caption [EOS].
  assert np.asarray(valid).tolist() == [[True] * 4 + [False] * 4]
  encode = lambda t, m: np.asarray(setup.model.apply({"params": params}, t, m,
                                                     method=clip.Clip.encode_text))
  a = encode(np.array([[5, 6, 0, 0, 0, 0]]), np.array([[1, 1, 0, 0, 0, 0]], bool))
  b = encode(np.array([[5, 6, 9, 9, 9, 9]]), np.array([[1, 1, 0, 0, 0, 0]], bool))
  np.testing.assert_allclose(a, b, atol=1e-6)  # Whatever the padding holds.
  c = encode(np.array([[5, 7, 0, 0, 0, 0]]), np.array([[1, 1, 0, 0, 0, 0]], bool))
  assert np.abs(a - c).max() > 1e-3  # A different caption, a different feature.
  with pytest.raises(ValueError, match="patch_size=5 does not divide"):
    _setup(patch_size=5)
