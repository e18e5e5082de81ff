"""Tests for upgen/evaluators/probe.py (`upgen eval probe`) and the families' `image_features`."""
import dataclasses
import json

import jax
import numpy as np
import pytest
from flax import linen as nn

from tests import token_data
from upgen import errors
from upgen import families
from upgen.evaluators import probe
from upgen.data.spec import DataSpec
from upgen.models import upgen


def test_probe_separates_what_is_separable_and_not_noise():
  rng = np.random.default_rng(0)
  centres = rng.normal(0, 3, (3, 10))
  y = rng.integers(0, 3, 300)
  x = centres[y] + rng.normal(0, 0.5, (300, 10))
  out = probe.train_probe(x[:200], y[:200], x[200:], y[200:], 3)
  assert out["eval_accuracy"] == 1.0 and out["train_accuracy"] == 1.0 and out["dims"] == 10
  noise = probe.train_probe(rng.normal(size=(200, 10)), y[:200], rng.normal(size=(100, 10)),
                            y[200:], 3)
  assert noise["eval_accuracy"] < 0.55  # Chance is 1/3.
  unseen = probe.train_probe(x[:200], y[:200], x[200:], np.full(100, -1), 3)
  assert unseen["eval_accuracy"] == 0.0  # Labels the training split never had: errors.


def test_read_labeled(tmp_path):
  d = tmp_path / "train"
  (d / "images").mkdir(parents=True)
  rows = [{"image": "images/0.png", "caption": "a", "labels": {"shape": "circle"}},
          {"image": "images/1.png", "caption": "b"},
          {"image": "images/2.png", "caption": "c", "shape": "square"}]
  for r in rows:
    (d / r["image"]).write_bytes(b"")
  (d / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  paths, labels = probe.read_labeled(str(tmp_path), "train", "shape", 0)
  assert labels == ["circle", "square"] and paths[1].endswith("2.png")
  with pytest.raises(errors.DataError, match=r"train/captions.jsonl: no record has a label 'hue'"):
    probe.read_labeled(str(tmp_path), "train", "hue", 0)


SPEC = DataSpec(text_vocab_size=40, text_pad_id=0, text_mask_id=1, text_seq_len=6,
                image_vocab_size=24, image_grid=(4, 4))


def test_upgen_image_features_per_block():
  setup = families.build(token_data.small_config("upgen", 3), SPEC)
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, 24, (2, 16)).astype(np.int32)
  batch = dict(image_tokens=tokens, text_tokens=np.zeros((2, 6), np.int32),
               text_mask=np.zeros((2, 6), bool), has_image=np.ones(2, bool),
               has_text=np.zeros(2, bool))
  params = nn.unbox(upgen.init_variables(setup.model, jax.random.key(0), batch))["params"]
  feats = jax.jit(lambda p, t: upgen.image_features(p, t, model=setup.model))(params, tokens)
  assert len(feats) == 3 and all(f.shape == (2, 32) for f in feats)
  assert not np.allclose(feats[0], feats[2])
  changed = tokens.copy()
  changed[1, 5] = (changed[1, 5] + 1) % 24
  again = upgen.image_features(params, changed, model=setup.model)
  np.testing.assert_allclose(again[2][0], feats[2][0], rtol=1e-5)  # Rows do not mix.
  assert not np.allclose(again[2][1], feats[2][1])
  assert families.get_family("upgen").image_features is not None

  # The decoder-only family: the positions that read image codes, per block.
  dalle_setup = families.build(token_data.small_config("dalle", 2), SPEC)
  dalle_params = nn.unbox(dalle_setup.family.init_variables(
      dalle_setup.model, jax.random.key(0), batch))["params"]
  dalle_feats = dalle_setup.family.image_features(dalle_params, tokens, model=dalle_setup.model)
  assert len(dalle_feats) == 2 and all(f.shape == (2, 32) for f in dalle_feats)
  moved = dalle_setup.family.image_features(dalle_params, changed, model=dalle_setup.model)
  assert not np.allclose(moved[1][1], dalle_feats[1][1])
  # The encoder-decoder family: its decoder blocks, the encoder fed the empty caption.
  for arch in ("preln", "bart"):
    config = token_data.small_config("bart", 2)
    config.model.architecture = arch
    bart_setup = families.build(config, dataclasses.replace(SPEC, text_bos_id=2,
                                                            text_eos_id=3))
    bart_params = nn.unbox(bart_setup.family.init_variables(
        bart_setup.model, jax.random.key(0), batch))["params"]
    bart_feats = bart_setup.family.image_features(bart_params, tokens, model=bart_setup.model)
    assert len(bart_feats) == 2 and all(f.shape == (2, 32) for f in bart_feats)
    moved = bart_setup.family.image_features(bart_params, changed, model=bart_setup.model)
    np.testing.assert_allclose(moved[1][0], bart_feats[1][0], rtol=1e-5)
    assert not np.allclose(moved[1][1], bart_feats[1][1])
  with pytest.raises(errors.ConfigError, match="cannot give per-layer image features"):
    families.get_family("vqgan").can("image_features")
