"""`upgen import hf --family clip` against transformers' own CLIP (4.57): a tiny random
FlaxCLIPModel built and saved here, as Flax msgpack and as PyTorch-layout safetensors,
imported, gives transformers' image and text features within 1e-5 in float32 (captions of
different lengths, padded, framed by <|startoftext|> ... <|endoftext|>)."""
import json
import os

import jax
import numpy as np
import pytest
from flax import linen as nn

from tests import hf_layouts
from tests import token_data
from upgen import cli
from upgen import families
from upgen import inference
from upgen.data.spec import DataSpec
from upgen.models import clip
from upgen.runtime import init_from

V, BOS, EOS, SIZE, LT = 50, 2, 3, 16, 6


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
  from transformers import CLIPConfig, FlaxCLIPModel
  config = CLIPConfig(
      text_config=dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, max_position_embeddings=16, bos_token_id=BOS,
                       eos_token_id=EOS, pad_token_id=0),
      vision_config=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, image_size=SIZE, patch_size=4),
      projection_dim=24)
  model = FlaxCLIPModel(config, seed=0)
  root = tmp_path_factory.mktemp("clip")

  def conv(pt):  # PyTorch's Conv2d weight is (out, in, kh, kw); Flax's kernel (kh, kw, in, out).
    kernel = hf_layouts.flat(model.params)["vision_model/embeddings/patch_embedding/kernel"]
    del pt["vision_model.embeddings.patch_embedding.weight"]
    pt["vision_model.embeddings.patch_embedding.weight"] = np.ascontiguousarray(
        kernel.transpose(3, 2, 0, 1))

  dirs = hf_layouts.save(model, root, extra=conv, layouts=("msgpack", "pt_safetensors"))
  return model, dirs


@pytest.mark.parametrize("layout", ["msgpack", "pt_safetensors"])
def test_imported_clip_gives_transformers_features(hf_dirs, layout, tmp_path):
  hf_model, dirs = hf_dirs
  init_dir = str(tmp_path / "init")
  assert cli.main(["import", "hf", "--from", str(dirs[layout]), "--family", "clip",
                   "--out", init_dir]) == 0
  config = token_data.small_config("clip")
  with open(os.path.join(init_dir, "import.json")) as f:
    config.model.update(json.load(f)["model"])
  config.model.update(dtype="float32", dropout_rate=0.0)
  spec = DataSpec(text_vocab_size=V, text_pad_id=0, text_mask_id=-1, text_bos_id=BOS,
                  text_eos_id=EOS, text_seq_len=LT, image_size=SIZE)
  setup = families.build(config, spec)
  fresh = nn.unbox(clip.init_variables(setup.model, jax.random.key(1),
                                       setup.dummy_batch(1))["params"])
  params = init_from.apply(fresh, init_dir)
  rng = np.random.default_rng(0)
  pixels = rng.integers(0, 256, (3, SIZE, SIZE, 3)).astype(np.uint8)
  normalized = (pixels / 255.0 - np.asarray(clip.PIXEL_MEAN)) / np.asarray(clip.PIXEL_STD)
  theirs = hf_model.get_image_features(pixel_values=normalized.transpose(0, 3, 1, 2))
  ours = setup.model.apply({"params": params}, pixels, method=clip.Clip.encode_image)
  np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), atol=1e-5)

  lengths = [6, 3, 1]
  valid = np.arange(LT)[None] < np.asarray(lengths)[:, None]
  text = np.where(valid, rng.integers(4, V, (3, LT)), 0).astype(np.int32)
  ours = setup.model.apply({"params": params}, text, valid, method=clip.Clip.encode_text)
  ids = np.zeros((3, LT + 2), np.int32)
  mask = np.zeros((3, LT + 2), np.int32)
  for row, n in enumerate(lengths):  # CLIP's tokenizer: <|startoftext|> caption <|endoftext|>.
    ids[row, :n + 2] = [BOS, *text[row, :n], EOS]
    mask[row, :n + 2] = 1
  theirs = hf_model.get_text_features(input_ids=ids, attention_mask=mask)
  np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), atol=1e-5)
  np.testing.assert_allclose(float(params["logit_scale"]),
                             float(hf_model.params["logit_scale"]), rtol=1e-6)


def test_an_imported_clip_scores_samples_as_transformers_does(tmp_path):
  """A CLIP directory with its tokenizer, imported, is a scorer as it is: its cosines are
  transformers' on the tokenizer's own framing of each caption."""
  from tokenizers import ByteLevelBPETokenizer
  from transformers import BartTokenizerFast, CLIPConfig, FlaxCLIPModel
  captions = ["a small red circle on the left", "a blue square above a green triangle"]
  bpe = ByteLevelBPETokenizer()
  bpe.train_from_iterator(captions * 4, vocab_size=300, min_frequency=1,
                          special_tokens=["<pad>", "<unk>", "<mask>", "<s>", "</s>"])
  bpe.save_model(str(tmp_path))
  tok = BartTokenizerFast(vocab_file=str(tmp_path / "vocab.json"),
                          merges_file=str(tmp_path / "merges.txt"))  # <s> ... </s>: 3, 4.
  # (An eos id of 2 would make transformers pool at the largest id: CLIP's legacy rule.)
  config = CLIPConfig(
      text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                       num_hidden_layers=1, num_attention_heads=4, max_position_embeddings=20,
                       bos_token_id=3, eos_token_id=4, pad_token_id=0),
      vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, image_size=SIZE, patch_size=8),
      projection_dim=16)
  model = FlaxCLIPModel(config, seed=3)
  hf_dir = tmp_path / "clip"
  model.save_pretrained(hf_dir)
  tok.save_pretrained(hf_dir)
  init_dir = str(tmp_path / "init")
  assert cli.main(["import", "hf", "--from", str(hf_dir), "--family", "clip", "--out",
                   init_dir]) == 0
  scorer = inference.Scorer(init_dir)
  images = np.random.default_rng(1).integers(0, 256, (2, SIZE, SIZE, 3)).astype(np.uint8)
  ours = scorer.cosine(images, captions)
  normalized = (images / 255.0 - np.asarray(clip.PIXEL_MEAN)) / np.asarray(clip.PIXEL_STD)
  image_f = np.asarray(model.get_image_features(pixel_values=normalized.transpose(0, 3, 1, 2)))
  enc = tok(captions, padding=True, return_tensors="np")
  text_f = np.asarray(model.get_text_features(input_ids=enc["input_ids"],
                                              attention_mask=enc["attention_mask"]))
  unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
  np.testing.assert_allclose(ours, np.sum(unit(image_f) * unit(text_f), 1), atol=1e-5)
