"""The whole "start the decoder-only family from a pretrained LM" workflow, through the
commands a user runs: pretrain a "gpt2" language model on text-only records (its held-out
perplexity logged by the text_ppl evaluator), `upgen export hf` (transformers loads it and
gives the same logits; `upgen eval text-ppl` on the run equals transformers' figure),
`upgen import hf` back, `upgen align` on paired records, and an image run from it with the
contrastive rows and the LM's own rows frozen."""
import json
import math
import os

import jax
import numpy as np
import pytest

from tests import gpt2_data
from upgen import cli
from upgen import errors
from upgen.runtime import restore
from upgen.runtime import init_from
from upgen import rundir

SMALL = {"model.num_layers": 2, "model.emb_dim": 32, "model.num_heads": 2,
         "model.mlp_dim": 64, "model.max_positions": 32, "data.batch_size": 8,
         "optim.warmup_steps": 2, "train.progress": False, "train.eval_batches": 1,
         "train.log_every": 2}


def _flags(**keys):
  return [f"--config.{k}={v}" for k, v in {**SMALL, **keys}.items()]


def _metrics(workdir):
  return [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]


def test_pretrain_export_import_align_adapt(tmp_path, capsys):
  tok = gpt2_data.tokenizer(tmp_path / "tok")
  text_records = gpt2_data.write_records(tmp_path / "text", tmp_path / "tok", paired=False)
  held_out = tmp_path / "held_out.txt"
  held_out.write_text("\n".join(gpt2_data.lines(6, 99, 3, 50)) + "\n")
  lm = str(tmp_path / "lm")
  assert cli.main(["train", "--config", "configs/dalle.py:gpt2_tiny", "--workdir", lm,
                   *_flags(**{"data.dir": text_records, "data.text_seq_len": 24,
                              "train.steps": 6, "evals.text_ppl.text": str(held_out)})]) == 0
  rows = _metrics(lm)
  assert "loss_text" in rows[0] and "loss_image" not in rows[0]  # A plain language model,
  assert all(r.get("captions_dropped", 0) == 0 for r in rows)  # whose text is no condition.
  final = rows[-1]
  assert final["text_ppl/perplexity"] == pytest.approx(math.exp(final["text_ppl/nats_per_token"]))

  # Exported: transformers loads the directory and gives the run's logits.
  capsys.readouterr()
  export = str(tmp_path / "hf")
  assert cli.main(["export", "hf", "--workdir", lm, "--out", export]) == 0
  assert json.loads(capsys.readouterr().out)["vocab_size"] == len(tok)
  from transformers import AutoTokenizer, FlaxGPT2LMHeadModel
  hf = FlaxGPT2LMHeadModel.from_pretrained(export)
  hf_tok = AutoTokenizer.from_pretrained(export)
  _, setup, params = restore.restore_params(lm)
  line = gpt2_data.lines(1, 5, 6, 7)[0]
  ids = np.asarray([hf_tok(line)["input_ids"]])
  assert ids.tolist() == [tok(line)["input_ids"]]
  ours = np.asarray(setup.model.apply({"params": params}, ids, np.zeros(1, np.int32)))
  np.testing.assert_allclose(ours[0, :, :len(tok)], np.asarray(hf(ids).logits[0]), atol=1e-5)
  # `upgen eval text-ppl` on the run is transformers' perplexity of the exported model.
  assert cli.main(["eval", "text-ppl", "--workdir", lm, "--text", str(held_out)]) == 0
  got = json.loads(capsys.readouterr().out)
  nll, count = 0.0, 0
  for text in held_out.read_text().splitlines():
    seq = hf_tok(text)["input_ids"][:32]
    logp = np.asarray(jax.nn.log_softmax(hf(np.asarray([seq])).logits[0, :-1], -1))
    nll -= float(np.take_along_axis(logp, np.asarray(seq[1:])[:, None], 1).sum())
    count += len(seq) - 1
  assert got["tokens"] == count
  np.testing.assert_allclose(got["nats_per_token"], nll / count, rtol=1e-5)

  # Back in as an INIT, aligned on paired records, then adapted to images.
  init_dir = str(tmp_path / "init")
  assert cli.main(["import", "hf", "--from", export, "--family", "dalle", "--out",
                   init_dir]) == 0
  paired = gpt2_data.write_records(tmp_path / "paired", os.path.join(init_dir, "tokenizer"),
                                   paired=True)
  run = str(tmp_path / "run")
  adapt = ["train", "--config", "configs/dalle.py:gpt2_tiny", "--workdir", run,
           *_flags(**{"data.dir": paired, "data.text_seq_len": 8, "train.steps": 4,
                      "train.sample_every": 4, "train.init_from": init_dir,
                      "train.init_new_rows": "contrastive", "optim.freeze": "text_rows",
                      "optim.weight_decay": 0.1})]
  assert cli.main(adapt) == 2  # No alignment yet: the error says which command writes it.
  assert "upgen align --workdir" in capsys.readouterr().err
  assert cli.main(["align", "--workdir", init_dir, "--data", paired, "--steps", "30",
                   "--batch-size", "16"]) == 0
  report = json.load(open(os.path.join(init_dir, "align.json")))
  assert report["val_end"]["loss"] < report["val_start"]["loss"]
  aligned = restore.load_params(init_dir, rundir.ALIGNED_DIR)["token_embed"]["embedding"]
  assert cli.main(adapt) == 0
  rows = _metrics(run)
  assert {"loss_text", "loss_image", "acc_image"} <= set(rows[0])
  _, setup, params = restore.restore_params(run)
  table = np.asarray(params["token_embed"]["embedding"])
  lm_table = np.asarray(init_from.source_params(init_dir)["token_embed/embedding"])
  np.testing.assert_array_equal(table[:len(tok)], lm_table[:len(tok)])  # Frozen, decayed not.
  assert table.shape == aligned.shape
  image_rows = slice(len(tok) + 7, len(tok) + 7 + 8)
  assert not np.array_equal(table[image_rows], aligned[image_rows])  # Trained from aligned.
  assert np.abs(table[image_rows] - aligned[image_rows]).max() < 0.5
  # A run of another architecture cannot take the LM's parameters: the error lists the keys.
  with pytest.raises(errors.ConfigError, match="config.model.architecture='gpt2'"):
    from configs import dalle
    init_from.check_architecture(init_dir, dalle.get_config("tiny").model)


def test_exported_upgen_bpe_loads_in_transformers_with_the_same_ids(tmp_path):
  """A run trained on upgen's own BPE exports it as a tokenizer transformers loads."""
  from transformers import AutoTokenizer
  from upgen.interop import hf_export
  from upgen.tokenizers import text
  lines = gpt2_data.lines(50, 3)
  ours = text.train_bpe(lines, 120, str(tmp_path / "bpe"))
  loaded = text.load(str(tmp_path / "bpe"))  # As the records' metadata path loads it.
  out = tmp_path / "hf"
  out.mkdir()
  assert hf_export.write_tokenizer(loaded, str(out)) == ["tokenizer.json", "tokenizer_config.json"]
  hf = AutoTokenizer.from_pretrained(str(out))
  for line in lines[:5] + ["A Red Circle, far left!"]:
    assert hf(line, add_special_tokens=False)["input_ids"] == ours.encode(line)
  assert hf.pad_token_id == ours.pad_id and hf.mask_token_id == ours.mask_id
