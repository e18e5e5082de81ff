"""`upgen import hf` / `upgen export hf` never differ from transformers without a word (#30):
an untied GPT-2 head is imported as the model's own output table and exported back; a
vocabulary larger than the tokenizer's is kept whole (transformers' softmax spans it); a
tensor of the wrong shape or a config without a size is refused in one line naming it; a
CLIP whose eos_token_id disagrees with its tokenizer is refused (and one that agrees under
transformers' legacy rule pools where transformers pools); an export carries the tokenizer's
BOS and EOS ids for generate()."""
import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import serialization
from safetensors.numpy import load_file, save_file

from tests import gpt2_data
from tests import hf_layouts
from upgen import cli
from upgen import inference
from upgen.evaluators import text_ppl
from upgen.interop import hf_export
from upgen.models import clip
from upgen.models import dalle
from upgen.tokenizers import text

CTX, E = 32, 32


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  return gpt2_data.tokenizer(tmp_path_factory.mktemp("tok"))


def _gpt2(tok, **config):
  from transformers import FlaxGPT2LMHeadModel, GPT2Config
  config = GPT2Config(**{**dict(vocab_size=len(tok), n_positions=CTX, n_embd=E, n_layer=2,
                                n_head=4, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                bos_token_id=tok.eos_token_id,
                                eos_token_id=tok.eos_token_id), **config})
  return FlaxGPT2LMHeadModel(config, seed=0)


def _import(src, out, family="dalle"):
  return cli.main(["import", "hf", "--from", str(src), "--family", family, "--out", str(out)])


def _logits(init_dir, ids):
  """The imported model's logits (float32) of one unpadded row, and its parameters."""
  setup, params, _ = text_ppl.load(str(init_dir))
  model = type(setup.model)(dataclasses.replace(setup.model.config, dtype=jnp.float32))
  return np.asarray(model.apply({"params": params}, ids, np.zeros(1, np.int32)))[0], params


def _ids(tok):
  return np.asarray([tok(gpt2_data.lines(1, 4, 12, 13)[0])["input_ids"][:CTX]])


def test_untied_gpt2_head_is_imported_and_exported(tok, tmp_path):
  model = _gpt2(tok, tie_word_embeddings=False)
  dirs = hf_layouts.save(model, tmp_path, layouts=("msgpack", "pt_safetensors"))
  ids = _ids(tok)
  want = np.asarray(model(ids).logits[0])
  for layout, src in dirs.items():
    tok.save_pretrained(src)
    assert _import(src, tmp_path / f"init_{layout}") == 0
    ours, params = _logits(tmp_path / f"init_{layout}", ids)
    np.testing.assert_allclose(ours[:, :len(tok)], want, atol=1e-5)
  report = json.load(open(tmp_path / "init_msgpack" / "import.json"))
  assert report["model"]["tie_embeddings"] is False and "lm_head/embedding" in report["parameters"]

  # Exported back: transformers loads an untied model with the same logits.
  setup, _, ours_tok = text_ppl.load(str(tmp_path / "init_msgpack"))
  hf_config, flat = dalle.export_hf(params, setup.model_config)
  out = tmp_path / "exported"
  hf_export.write_model(str(out), hf_config, flat, ours_tok)
  from transformers import FlaxGPT2LMHeadModel
  back = FlaxGPT2LMHeadModel.from_pretrained(str(out))
  assert back.config.tie_word_embeddings is False
  np.testing.assert_allclose(np.asarray(back(ids).logits[0]), want, atol=1e-5)


def test_a_vocabulary_larger_than_the_tokenizer_is_kept(tok, tmp_path, capsys):
  model = _gpt2(tok, vocab_size=len(tok) + 20)  # Rows past the tokenizer's ids.
  src = tmp_path / "hf"
  model.save_pretrained(src)
  tok.save_pretrained(src)
  assert _import(src, tmp_path / "init") == 0
  ids = _ids(tok)
  want = np.asarray(model(ids).logits[0])
  ours, _ = _logits(tmp_path / "init", ids)
  np.testing.assert_allclose(ours[:, :want.shape[1]], want, atol=1e-5)  # All 320 of them.
  assert np.isneginf(ours[:, want.shape[1]:]).all()
  # The perplexity is transformers' (its softmax spans the extra rows too).
  lines = gpt2_data.lines(3, 8, 4, 20)
  (tmp_path / "lines.txt").write_text("\n".join(lines) + "\n")
  capsys.readouterr()
  assert cli.main(["eval", "text-ppl", "--workdir", str(tmp_path / "init"), "--text",
                   str(tmp_path / "lines.txt")]) == 0
  got = json.loads(capsys.readouterr().out)
  nll, count = 0.0, 0
  for line in lines:
    seq = tok(line)["input_ids"][:CTX]
    logp = np.asarray(jax.nn.log_softmax(model(np.asarray([seq])).logits[0, :-1], -1))
    nll -= float(np.take_along_axis(logp, np.asarray(seq[1:])[:, None], 1).sum())
    count += len(seq) - 1
  np.testing.assert_allclose(got["nats_per_token"], nll / count, rtol=1e-5)


def _one_line_error(capsys, argv_src, out, *needles):
  capsys.readouterr()
  assert _import(argv_src, out) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("upgen import hf: error: "), err
  for needle in needles:
    assert needle in err[0], (needle, err[0])
  assert not os.path.exists(out)  # A refused import writes nothing.


def test_wrong_shapes_are_refused_in_one_line_naming_the_tensor(tok, tmp_path, capsys):
  model = _gpt2(tok)
  dirs = hf_layouts.save(model, tmp_path, layouts=("msgpack", "pt_safetensors"))
  msgpack = dirs["msgpack"] / "flax_model.msgpack"
  tree = serialization.msgpack_restore(msgpack.read_bytes())
  tree["transformer"]["ln_f"]["scale"] = np.ones(E + 4, np.float32)
  msgpack.write_bytes(serialization.msgpack_serialize(tree))
  _one_line_error(capsys, dirs["msgpack"], tmp_path / "a", str(msgpack),
                  "transformer/ln_f/scale has shape (36,)", "implies (32,)")
  st = str(dirs["pt_safetensors"] / "model.safetensors")
  tensors = load_file(st)
  tensors["transformer.h.0.attn.c_proj.weight"] = np.ones((E, E // 2), np.float32)
  save_file(tensors, st, metadata={"format": "pt"})
  _one_line_error(capsys, dirs["pt_safetensors"], tmp_path / "b", st,
                  "transformer.h.0.attn.c_proj.weight has shape (32, 16)", "implies (32, 32)")


def test_a_config_without_a_size_is_refused_in_one_line(tok, tmp_path, capsys):
  src = tmp_path / "hf"
  _gpt2(tok).save_pretrained(src)
  config = json.load(open(src / "config.json"))
  del config["n_embd"]
  (src / "config.json").write_text(json.dumps(config))
  _one_line_error(capsys, src, tmp_path / "init", f"{src / 'config.json'}: no n_embd")


CAPTIONS = ["a small red circle on the left", "a blue square above a green triangle"]


def test_clip_pools_where_transformers_pools_or_is_refused(tmp_path, capsys):
  from tokenizers import ByteLevelBPETokenizer
  from transformers import BartTokenizerFast, CLIPConfig, FlaxCLIPModel
  bpe = ByteLevelBPETokenizer()
  bpe.train_from_iterator(CAPTIONS * 4, vocab_size=300, min_frequency=1,
                          special_tokens=["<pad>", "<unk>", "<mask>", "<s>"])
  bpe.save_model(str(tmp_path))
  hf_tok = BartTokenizerFast(vocab_file=str(tmp_path / "vocab.json"),
                             merges_file=str(tmp_path / "merges.txt"))
  hf_tok.add_special_tokens({"eos_token": "</s>"})  # Added last: the largest id.
  eos = hf_tok.eos_token_id
  assert eos == len(hf_tok) - 1 != 2
  # text_config.eos_token_id=2: transformers' legacy rule, pooling at the largest input id,
  # here </s>, where the clip family pools.
  config = CLIPConfig(
      text_config=dict(vocab_size=len(hf_tok), hidden_size=32, intermediate_size=64,
                       num_hidden_layers=1, num_attention_heads=4, max_position_embeddings=20,
                       bos_token_id=hf_tok.bos_token_id, eos_token_id=2,
                       pad_token_id=hf_tok.pad_token_id),
      vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, image_size=16, patch_size=8),
      projection_dim=16)
  model = FlaxCLIPModel(config, seed=3)
  src = tmp_path / "clip"
  model.save_pretrained(src)
  hf_tok.save_pretrained(src)
  init_dir = str(tmp_path / "init")
  assert _import(src, init_dir, family="clip") == 0
  assert text.load(os.path.join(init_dir, "tokenizer")).eos_id == eos
  ours = inference.Scorer(init_dir).text_features(CAPTIONS)
  enc = hf_tok(CAPTIONS, padding=True, return_tensors="np")
  theirs = np.asarray(model.get_text_features(input_ids=enc["input_ids"],
                                              attention_mask=enc["attention_mask"]))
  np.testing.assert_allclose(ours, clip.normalize(theirs), atol=1e-5)

  # Any other eos_token_id than the tokenizer's: transformers pools at its first position,
  # the clip family at </s>: refused, naming both.
  hf_config = json.load(open(src / "config.json"))
  hf_config["text_config"]["eos_token_id"] = 5
  (src / "config.json").write_text(json.dumps(hf_config))
  capsys.readouterr()
  assert _import(src, tmp_path / "refused", family="clip") == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "text_config.eos_token_id=5" in err[0], err
  assert f"tokenizer has EOS {eos}" in err[0]


def test_export_carries_the_tokenizers_bos_and_eos(tok, tmp_path):
  src = tmp_path / "hf"
  _gpt2(tok).save_pretrained(src)
  tok.save_pretrained(src)
  assert _import(src, tmp_path / "init") == 0
  setup, params, ours_tok = text_ppl.load(str(tmp_path / "init"))
  hf_config, flat = dalle.export_hf(params, setup.model_config)
  out = tmp_path / "exported"
  hf_export.write_model(str(out), hf_config, flat, ours_tok)
  from transformers import AutoConfig, GenerationConfig
  eos = tok.eos_token_id
  config = AutoConfig.from_pretrained(str(out))
  generation = GenerationConfig.from_pretrained(str(out))
  assert (config.bos_token_id, config.eos_token_id) == (eos, eos) != (50256, 50256)
  assert (generation.bos_token_id, generation.eos_token_id) == (eos, eos)
