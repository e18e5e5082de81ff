"""Tests for upgen/flops.py (FLOP accounting against XLA) and `upgen bench train|sample`."""
import json

import jax
import pytest
from flax import linen as nn

from configs import bart as bart_config
from configs import dalle as dalle_config
from configs import upgen as upgen_config
from upgen.tools import bench
from upgen import cli
from upgen import flops
from upgen.models import dalle_gpt2

# A small but matmul-dominated shape so that XLA's count is close to the model count.
SMALL = ["--config.model.num_layers=2", "--config.model.emb_dim=64", "--config.model.mlp_dim=256",
         "--config.model.num_heads=2", "--config.data.batch_size=4", "--image_grid=4",
         "--image_vocab=32", "--text_vocab=48"]


def _setup(config_module, **model):
  c = config_module.get_config("tiny")
  c.model.update(dict(num_layers=2, emb_dim=64, mlp_dim=256, num_heads=2, **model))
  return bench.setup_for(c, image_grid=4, image_vocab=32, text_vocab=48)


def _xla_flops(fn, *args) -> float:
  cost = jax.jit(fn).lower(*args).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost["flops"])


def test_transformer_terms_written_out():
  t = flops.Transformer(num_layers=2, emb_dim=8, mlp_dim=32, seq_len=10, causal=False,
                        heads=((6, 5), (4, 7)))
  assert t.matmul_params == 2 * (4 * 64 + 2 * 8 * 32)
  count = t.train_flops()
  assert dict((n, f) for n, f, _ in count.terms) == {
      "6N x L": 6 * t.matmul_params * 10, "attention": 12 * 2 * 100 * 8,
      "output heads": 6 * 8 * (6 * 5 + 4 * 7)}
  causal = flops.Transformer(2, 8, 32, 10, causal=True, heads=((6, 5), (4, 7))).train_flops()
  assert count.total - causal.total == 6 * 2 * 100 * 8  # Causal drops half the attention.
  assert "bidirectional" in count.describe() and "causal" in causal.describe()
  assert t.forward_flops().total == pytest.approx(count.total / 3)
  assert flops.mfu(989e12 * 0.5, 1.0, 1, 989e12) == 0.5
  assert flops.device_peaks("NVIDIA H100 80GB HBM3")[0] == 989e12
  assert flops.device_peaks("cpu") is None


def test_upgen_forward_flops_match_xla():
  setup = _setup(upgen_config)
  family, model, batch = setup.family, setup.model, setup.dummy_batch(2)
  params = nn.unbox(jax.eval_shape(lambda r: family.init_variables(model, r, batch),
                                   jax.random.key(0))["params"])
  forward = lambda p: model.apply({"params": p}, batch["image_tokens"], batch["text_tokens"],
                                  batch["text_mask"], batch["has_image"], train=False)
  ours = 2 * family.train_flops(setup.model_config).total / 3
  # XLA also counts norms, softmax and activations: a few percent on top of the matmuls.
  assert 0.9 < ours / _xla_flops(forward, params) < 1.05


@pytest.mark.parametrize("family", ["dalle", "dalle:gpt2", "bart"])
def test_causal_forward_flops_match_xla_with_the_masked_half_removed(family):
  if family == "dalle":
    setup = _setup(dalle_config)
  elif family == "dalle:gpt2":  # Tied logits over every table row at every input.
    setup = _setup(dalle_config, architecture="gpt2")
  else:  # The count is the same for both architectures; "preln" keeps XLA's count
    # matmul-bound at this small width ("bart"'s exact GELU costs XLA ~20 elementwise FLOPs
    # per MLP unit).
    setup = _setup(bart_config, encoder_layers=2, architecture="preln")
  model, batch, c = setup.model, setup.dummy_batch(2), setup.model_config
  params = nn.unbox(jax.eval_shape(lambda r: setup.family.init_variables(model, r, batch),
                                   jax.random.key(0))["params"])
  forward = lambda p: model.apply({"params": p}, batch["text_tokens"], batch["text_mask"],
                                  batch["image_tokens"], train=False)
  causal_len = c.stream_len if family == "dalle" else c.image_seq_len
  if family == "dalle:gpt2":
    ids, pads = dalle_gpt2.document(batch["text_tokens"], batch["text_mask"],
                                    batch["image_tokens"], dalle_gpt2.layout(c))
    forward = lambda p: model.apply({"params": p}, ids[:, :-1], pads, train=False)
    causal_len = dalle_gpt2.layout(c).doc_len - 1
  # XLA computes the full L x L scores of causal self-attention (the decoder-only stream,
  # the encoder-decoder's decoder); our count keeps only their causal half.
  masked_half = 2 * c.num_layers * causal_len ** 2 * c.emb_dim
  ours = 2 * (setup.family.train_flops(c).total / 3 + masked_half)
  assert 0.9 < ours / _xla_flops(forward, params) < 1.05


def test_bench_train_reports_mfu_from_the_written_flop_count(tmp_path, capsys):
  out = tmp_path / "bench.jsonl"
  assert bench.main(["train", "--config", "configs/upgen.py:tiny", "--steps", "2",
                     "--peak_tflops", "0.5", "--json", str(out)] + SMALL) == 0
  printed = capsys.readouterr().out
  row = json.loads(out.read_text())
  assert row["tokens_per_example"] == 16 + 12 and row["batch_size"] == 4
  assert row["tokens_per_s"] == pytest.approx(4 * 28 / (row["step_ms"] / 1e3))
  setup = _setup(upgen_config)
  flops_per_example = setup.family.train_flops(setup.model_config).total
  assert row["flops_per_example"] == flops_per_example
  assert row["mfu"] == pytest.approx(flops_per_example * 4 / (row["step_ms"] / 1e3) / 0.5e12)
  assert "6N x L" in printed and "bidirectional" in printed and "MFU" in printed
  assert row["command"].startswith("upgen bench train") and row["date"]


def test_bench_sample_both_families_beside_their_bounds(tmp_path):
  out = tmp_path / "bench.jsonl"
  for name in ("upgen", "dalle"):
    assert bench.main(["sample", "--config", f"configs/{name}.py:tiny", "--batch_sizes", "1,2",
                       "--repeats", "1", "--peak_tflops", "1", "--bandwidth_tbs", "0.1",
                       "--json", str(out)] + SMALL) == 0
  rows = [json.loads(line) for line in out.read_text().splitlines()]
  assert [(r["config"], r["batch_size"]) for r in rows] == [
      ("upgen", 1), ("upgen", 2), ("dalle", 1), ("dalle", 2)]
  for r in rows:
    assert r["image_tokens_per_s"] == pytest.approx(16 * r["images_per_s"])
    assert r["flop_bound_images_per_s"] > 0 and r["bandwidth_bound_images_per_s"] > 0
  upgen_1, upgen_2, dalle_1, dalle_2 = rows
  # MaskGIT reads the parameters once per step for the whole batch: the bandwidth bound
  # grows with the batch while the FLOP bound per image does not.
  assert upgen_2["bandwidth_bound_images_per_s"] == pytest.approx(
      2 * upgen_1["bandwidth_bound_images_per_s"])
  assert upgen_2["flop_bound_images_per_s"] == pytest.approx(upgen_1["flop_bound_images_per_s"])
  # Cached decoding also reads a K,V cache per row, so doubling the batch gains less than 2x.
  ratio = dalle_2["bandwidth_bound_images_per_s"] / dalle_1["bandwidth_bound_images_per_s"]
  assert 1.0 < ratio < 2.0
  # Guided: the caption stream and the image-alone stream, every step.
  assert "12 steps x 1 x" in upgen_1["cost"] and "the image alone" in upgen_1["cost"]
  assert "K,V cache" in dalle_1["cost"]


def test_bench_errors_name_the_flag(capsys):
  assert cli.main(["bench", "train", "--config", "configs/upgen.py:tiny",
                   "--config.model.nope=1"]) == 2
  assert capsys.readouterr().err.splitlines() == [
      "upgen bench train: error: --config.model.nope: no such config key; configs are locked, "
      "so an override names an existing key"]
  assert bench.main(["profile"]) == 2
