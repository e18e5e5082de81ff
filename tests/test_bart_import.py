"""`upgen import hf --family bart` against transformers' own BART (4.57, the last release
with Flax models): a tiny random FlaxBartModel built and saved here, in every file layout,
imported, gives transformers' encoder hidden states (and, for a decoder over the text
vocabulary, its decoder outputs) within 1e-5 in float32, with padding in the batch. Then
`train.init_from` starts a run from it and `optim.freeze=encoder` keeps the encoder exact."""
import json
import os

import jax
import numpy as np
import pytest
from flax import linen as nn

from tests import hf_layouts
from tests import token_data
from upgen import cli
from upgen import errors
from upgen import families
from upgen.interop import hf_import
from upgen.models import hf_weights
from upgen import rundir
from upgen.data.spec import DataSpec
from upgen.models import bart
from upgen.runtime import restore
from upgen.runtime import init_from

V, E, LT = token_data.TEXT_VOCAB, 32, 6  # The records' caption vocabulary.


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
  """The same random BART saved as Flax msgpack, Flax safetensors and PyTorch-layout
  safetensors (the last written here from the Flax weights, as transformers' PyTorch
  state dict names and lays them out: transformers needs torch to write it itself)."""
  from transformers import BartConfig, FlaxBartModel
  config = BartConfig(vocab_size=V, d_model=E, encoder_layers=2, decoder_layers=2,
                      encoder_attention_heads=4, decoder_attention_heads=4,
                      encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=16,
                      scale_embedding=True, pad_token_id=0, bos_token_id=2, eos_token_id=3)
  model = FlaxBartModel(config, seed=0)
  root = tmp_path_factory.mktemp("hf")

  def tied(pt):
    pt["model.encoder.embed_tokens.weight"] = pt["model.shared.weight"]
    pt["final_logits_bias"] = np.zeros((1, V), np.float32)

  dirs = hf_layouts.save(model, root, prefix="model/", extra=tied)
  return model, dirs


def _setup(init_dir, image_vocab=8, grid=(2, 2)):
  config = token_data.small_config("bart", architecture="bart")
  with open(os.path.join(init_dir, "config.json")) as f:
    config.model.update({k: v for k, v in json.load(f)["model"].items()
                         if k not in ("family", "size")})
  config.model.update(dropout_rate=0.0, attention_dropout_rate=0.0, dtype="float32",
                      param_dtype="float32")
  spec = DataSpec(text_vocab_size=V, text_pad_id=0, text_mask_id=1, text_bos_id=2,
                  text_eos_id=3, text_seq_len=LT, image_vocab_size=image_vocab, image_grid=grid)
  return families.build(config, spec)


def _batch():
  valid = np.arange(LT)[None] < np.array([[6], [3], [1]])
  text = np.where(valid, np.arange(3 * LT).reshape(3, LT) % (V - 4) + 4, 0).astype(np.int32)
  return text, valid


@pytest.mark.parametrize("layout", ["msgpack", "flax_safetensors", "pt_safetensors"])
def test_imported_encoder_gives_transformers_hidden_states(hf_dirs, layout, tmp_path):
  hf_model, dirs = hf_dirs
  init_dir = str(tmp_path / "init")
  assert cli.main(["import", "hf", "--from", str(dirs[layout]), "--family", "bart",
                   "--out", init_dir]) == 0
  report = json.load(open(os.path.join(init_dir, "import.json")))
  assert report["model"]["architecture"] == "bart" and report["model"]["encoder_layers"] == 2
  assert ("PyTorch layout" in report["source"]) == (layout == "pt_safetensors")
  setup = _setup(init_dir)
  fresh = nn.unbox(bart.init_variables(setup.model, jax.random.key(0),
                                       setup.dummy_batch(1))["params"])
  params = init_from.apply(fresh, init_dir)
  text, valid = _batch()
  ours, mask = setup.model.apply({"params": params}, text, valid, method=bart.Bart.encode)
  ids, enc_valid = (np.asarray(x) for x in bart.encoder_inputs(text, valid,
                                                                setup.model_config))
  assert (~enc_valid).any()  # Padding in the batch.
  theirs = hf_model.encode(ids, attention_mask=enc_valid.astype(np.int32)).last_hidden_state
  np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), atol=1e-5)

  # A decoder over the caption vocabulary (decoder-start = its last id) is transformers'
  # decoder: give it the shared embedding and compare its outputs.
  setup = _setup(init_dir, image_vocab=V - 1, grid=(2, 3))
  fresh = nn.unbox(bart.init_variables(setup.model, jax.random.key(0),
                                       setup.dummy_batch(1))["params"])
  params = init_from.apply(fresh, init_dir)
  params["image_embed"] = params["text_embed"]
  codes = np.arange(3 * 6).reshape(3, 6) % (V - 1)
  dec_ids = np.asarray(bart.decoder_inputs(codes, setup.model_config))
  encoded, mask = setup.model.apply({"params": params}, text, valid, method=bart.Bart.encode)
  ours = setup.model.apply({"params": params}, dec_ids, 0, encoded, mask,
                           method=bart.Bart.decode_hidden)
  theirs = hf_model(ids, attention_mask=enc_valid.astype(np.int32), decoder_input_ids=dec_ids,
                    decoder_attention_mask=np.ones_like(dec_ids)).last_hidden_state
  np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), atol=1e-5)


def test_import_errors_name_the_problem(hf_dirs, tmp_path):
  _, dirs = hf_dirs
  empty = tmp_path / "empty"
  empty.mkdir()
  (empty / "config.json").write_text("{}")
  (empty / "pytorch_model.bin").write_bytes(b"not read")
  with pytest.raises(errors.NotFound, match="pickled weights are not read"):
    hf_weights.read_weights(str(empty))
  with pytest.raises(errors.ConfigError, match="family 'vqgan' cannot|imports no Hugging Face"):
    hf_import.import_hf(str(dirs["msgpack"]), "vqgan", str(tmp_path / "out"))
  bad = tmp_path / "gpt"
  bad.mkdir()
  (bad / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
  (bad / "flax_model.msgpack").write_bytes((dirs["msgpack"] / "flax_model.msgpack").read_bytes())
  with pytest.raises(errors.ConfigError, match="model_type='gpt2', not a BART"):
    hf_import.import_hf(str(bad), "bart", str(tmp_path / "out"))


def test_training_from_an_import_with_the_encoder_frozen(hf_dirs, tmp_path):
  _, dirs = hf_dirs
  init_dir = str(tmp_path / "init")
  hf_import.import_hf(str(dirs["msgpack"]), "bart", init_dir)
  data_dir = token_data.write(str(tmp_path / "records"))
  workdir = tmp_path / "run"
  model_flags = [f"--config.model.{k}={v}" for k, v in json.load(
      open(os.path.join(init_dir, "import.json")))["model"].items()]
  flags = [f"--config.{k}={v}" for k, v in token_data.tiny_overrides(data_dir).items()
           if not k.startswith("model.")]
  argv = ["train", "--config", "configs/bart.py:tiny", "--workdir", str(workdir), *flags,
          *model_flags, "--config.train.steps=4", f"--config.train.init_from={init_dir}",
          "--config.optim.freeze=encoder", "--config.optim.weight_decay=0.1",
          "--config.optim.warmup_steps=0"]
  assert cli.main(argv) == 0
  _, setup, params = restore.restore_params(str(workdir))
  imported = restore.load_params(init_dir)
  for group in bart.PARAM_GROUPS["encoder"]:
    if group not in imported:
      continue
    for a, b in zip(jax.tree.leaves(imported[group]), jax.tree.leaves(params[group])):
      np.testing.assert_array_equal(np.asarray(a)[:np.shape(b)[0]], np.asarray(b))
  # The decoder trained: its blocks moved away from the imported ones.
  moved = [not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(
      jax.tree.leaves(imported["decoder"]), jax.tree.leaves(params["decoder"]))]
  assert any(moved)
  # INIT is no trained run: commands reading a run say what to do with it.
  with pytest.raises(errors.NotFound, match="an import .*train from it with "
                                            "--config.train.init_from"):
    restore.restore_params(init_dir)
  # A run's architecture must be the import's.
  with pytest.raises(errors.ConfigError, match="its model has config.model.emb_dim=32, "
                                               "this run 128"):
    init_from.check_architecture(init_dir, token_data.small_config(
        "bart", 1, architecture="bart", emb_dim=128).model)


def test_a_masked_text_run_starts_the_encoder_of_an_image_run(tmp_path, capsys):
  """init_from a run directory of the same family, taking only its encoder."""
  data_dir = token_data.write(str(tmp_path / "records"))
  flags = [f"--config.{k}={v}" for k, v in token_data.tiny_overrides(data_dir).items()]
  pre, run = str(tmp_path / "pre"), str(tmp_path / "run")
  assert cli.main(["train", "--config", "configs/bart.py:tiny", "--workdir", pre, *flags,
                   "--config.train.steps=3", "--config.loss.objective=masked_text"]) == 0
  metrics = [json.loads(l) for l in open(os.path.join(pre, "metrics.jsonl"))]
  assert "loss_text" in metrics[0] and "loss_image" not in metrics[0]
  _, _, pretrained = restore.restore_params(pre)
  argv = ["train", "--config", "configs/bart.py:tiny", "--workdir", run, *flags,
          "--config.train.steps=2", "--config.seed=1", f"--config.train.init_from={pre}",
          "--config.train.init_groups=encoder", "--config.optim.freeze=encoder"]
  assert cli.main(argv) == 0
  _, _, params = restore.restore_params(run)
  taken = [g for g in bart.PARAM_GROUPS["encoder"] if g in params]
  assert {"text_embed", "text_pos", "encoder"} <= set(taken)
  for group in taken:
    for a, b in zip(jax.tree.leaves(pretrained[group]), jax.tree.leaves(params[group])):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # The decoder was not taken: another seed's init, then trained.
  for group in ("decoder", "image_head", "image_pos"):
    assert all(not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(
        jax.tree.leaves(pretrained[group]), jax.tree.leaves(params[group])))
  # A run cannot start from itself (a resumed run would ignore init_from without a word).
  assert cli.main(["train", "--config", "configs/bart.py:tiny", "--workdir", pre, *flags,
                   "--config.train.steps=3", f"--config.train.init_from={pre}"]) == 2
  with pytest.raises(errors.ConfigError, match="init_groups='encodr': no parameter group "
                                               "encodr in this family"):
    init_from.group_names("encodr", bart.PARAM_GROUPS)
  assert cli.main(["train", "--config", "configs/bart.py:tiny", "--workdir",
                   str(tmp_path / "frozen"), *flags, "--config.optim.freeze=encoder,decodr"]) == 2
  assert ("config.optim.freeze='encoder,decodr': no parameter group decodr in this family "
          "(its groups: decoder, encoder)") in capsys.readouterr().err
  assert not os.path.exists(tmp_path / "frozen" / "checkpoints")
  with pytest.raises(errors.ConfigError, match="its model has config.model.emb_dim=32, "
                                               "this run 128"):
    init_from.check_architecture(pre, token_data.small_config("bart", 2, emb_dim=128).model)


def test_the_imported_tokenizer_gives_the_encoder_barts_own_input_ids(hf_dirs, tmp_path):
  """A BART tokenizer in the HF directory becomes INIT/tokenizer; captions tokenized with
  it reach the encoder as transformers' tokenizer writes them: <s> caption </s>."""
  import shutil
  import types

  from tokenizers import ByteLevelBPETokenizer
  from transformers import BartTokenizerFast

  from upgen.tokenizers import text as text_tok
  _, dirs = hf_dirs
  captions = ["a small red circle on the left", "a large blue square above a green triangle",
              "two yellow stars to the right of a circle"]
  bpe = ByteLevelBPETokenizer()
  bpe.train_from_iterator(captions * 4, vocab_size=300, min_frequency=1,
                          special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
  files = tmp_path / "bpe"
  files.mkdir()
  bpe.save_model(str(files))
  hf_tok = BartTokenizerFast(vocab_file=str(files / "vocab.json"),
                             merges_file=str(files / "merges.txt"))
  hf_dir = tmp_path / "bart_with_tokenizer"
  shutil.copytree(dirs["msgpack"], hf_dir)
  hf_tok.save_pretrained(str(hf_dir))
  init_dir = str(tmp_path / "init")
  assert cli.main(["import", "hf", "--from", str(hf_dir), "--family", "bart",
                   "--out", init_dir]) == 0
  ours = text_tok.load(os.path.join(init_dir, rundir.TOKENIZER_DIR))
  assert (ours.bos_id, ours.pad_id, ours.eos_id, ours.mask_id) == (0, 1, 2, 4)
  ids, valid = ours.pad_batch(ours.encode_batch(captions), 40)
  cfg = types.SimpleNamespace(text_pad_id=ours.pad_id, text_bos_id=ours.bos_id,
                              text_eos_id=ours.eos_id)
  enc_ids, enc_valid = bart.encoder_inputs(ids, valid, cfg)
  for row, caption in enumerate(captions):
    want = hf_tok(caption)["input_ids"]
    assert want[0] == 0 and want[-1] == 2
    assert np.asarray(enc_ids[row])[np.asarray(enc_valid[row])].tolist() == want
