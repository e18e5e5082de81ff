"""End to end on generated shapes, through the console script as users script it:
quickstart (data, tokenizers, records, UPGen, samples), then `upgen train` on its records,
then `upgen sample` (text->image and image->text) from that run."""
import json
import os
import subprocess
import sys

import io

import numpy as np
import pytest
from PIL import Image

from tests import test_writers
from upgen.data import records
from upgen.data import tfrecord

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _upgen(*args):
  return subprocess.run([sys.executable, "-m", "upgen.cli", *map(str, args)], cwd=ROOT,
                        check=True, capture_output=True, text=True)


def _jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def tensorboard_images(run_dir, tag):
  """The images logged under `tag` in a run directory's TensorBoard events."""
  event_cls = test_writers._event_class()
  out = []
  tb_dir = os.path.join(run_dir, "tensorboard")
  for path in sorted(os.path.join(tb_dir, name) for name in os.listdir(tb_dir)):
    for r in tfrecord.read_records(str(path)):
      for v in event_cls.FromString(r).summary.value:
        if v.tag == tag and v.HasField("image"):
          out.append(np.asarray(Image.open(io.BytesIO(v.image.encoded_image_string))))
  return out


def test_quickstart_train_and_sample_contract(tmp_path, tiny_quickstart):
  w, stdout = tiny_quickstart  # conftest: the quickstart at a few seconds per model.
  assert "caption fidelity on test captions" in stdout
  assert "image->text on 64 val images: exact match" in stdout
  # The scorer stage: best of 2 by a CLIP scorer trained on the quickstart's pixel records.
  assert "caption fidelity on test captions, best of 2 by the scorer" in stdout
  best_of = _jsonl(w / "samples_best_of_N" / "manifest.jsonl")
  assert len(best_of) == 3 * 2 and all(m["candidates"] == 2 for m in best_of)
  assert 0 <= json.load(open(w / "summary.json"))["fidelity_test_best_of_2"] <= 1
  # What reranking gained per attribute over the first candidate of the same draws.
  reranked = json.load(open(w / "samples_best_of_N" / "fidelity.json"))
  one = reranked["one_candidate"]
  assert os.path.exists(w / "samples_best_of_N" / "one_candidate" / "manifest.jsonl")
  gain = json.load(open(w / "summary.json"))["rerank_gain"]
  assert gain["fidelity"] == pytest.approx(
      reranked["caption_fidelity"] - one["caption_fidelity"], abs=1e-4)
  assert {"shape", "color"} <= set(gain)
  assert "best of 2 over one candidate, per attribute: " in stdout

  meta = json.load(open(w / "data" / "metadata.json"))
  assert set(meta["splits"]) == {"train", "val", "test"}
  assert meta["image_tokenizer"]["grid"] == [8, 8]
  assert meta["pixels"] == {"image_size": 32, "format": "png"}  # For the pixel families.
  rows = _jsonl(w / "model" / "metrics.jsonl")
  losses = [r["loss"] for r in rows if "loss" in r]
  assert losses and all(np.isfinite(losses))
  manifest = _jsonl(w / "samples" / "manifest.jsonl")
  assert len(manifest) == 3 * 2 and {"prompt", "image"} <= set(manifest[0])
  held_out = set(json.load(open(w / "shapes" / "shapes.json"))["held_out_captions"])
  assert {m["prompt"] for m in manifest} <= held_out
  image = np.asarray(Image.open(w / "samples" / manifest[0]["image"]))
  assert image.shape == (32, 32, 3)
  assert os.path.exists(w / "samples" / "grid.png")
  summary = json.load(open(w / "summary.json"))
  # The recipe rules give shapes the recipe measured on shapes (upgen/tools/recipe.py).
  assert [(c["what"], c["value"]) for c in summary["recipe"]] == [
      ("--text-vocab-size", 128), ("config.data.text_seq_len", 12),
      ("config.loss.paired_text_mask_prob", 0.5),
      ("config.model", "tiny: 4 layers x 128 wide, 4 heads, MLP 256"),
      ("config.data.batch_size", 8),
      ("config.optim", "lr 0.003, 50 warmup steps, cosine decay to 0.1 x lr"),
      ("--image-grid", 8), ("--codebook-size", 64)]
  vq = json.load(open(w / "vqgan" / "config.json"))["model"]
  assert vq["codebook_size"] == 64 and vq["channel_multipliers"] == [1, 2, 4]
  # Epochs are printed to two decimals: within half a hundredth (and float error) of exact.
  assert summary["train"]["epochs"] == pytest.approx(summary["train"]["steps"] * 8 / 512,
                                                     abs=0.0051)
  assert "the recipe chosen for this folder:" in stdout
  assert json.load(open(w / "model" / "config.json"))["data"]["text_seq_len"] == 12
  for key in ("fidelity_test", "fidelity_val"):
    assert 0.0 <= summary[key] <= 1.0
  assert summary["reconstruction"]["psnr"] > 10
  captions = json.load(open(w / "captions_val.json"))
  assert captions["num"] == len(captions["captions"]) == 64
  assert summary["captions_val"]["exact_match"] == captions["exact_match"]
  assert set(summary["captions_val"]["attribute_accuracy"]) >= {"count", "color", "shape"}
  # Both runs put a sample grid in TensorBoard: 8 validation references above 8 samples.
  for run in ("vqgan", "model"):
    (grid,) = tensorboard_images(w / run, "samples")
    assert grid.shape == (2 * 33 + 1, 8 * 33 + 1, 3), run
    cells = [grid[1:33, 1 + 33 * i:33 + 33 * i] for i in range(8)]
    assert len({c.tobytes() for c in cells}) == 8, run  # Eight different validation images.
  # The VQGAN's references are the original pixels: saturated shapes on black.
  (grid,) = tensorboard_images(w / "vqgan", "samples")
  assert (grid[1:33].max(axis=-1) > 200).mean() > 0.05

  # `upgen tokenize --pixels` from the command line with the quickstart's BPE and VQGAN
  # gives the records the quickstart wrote, byte for byte (tokens, caption, PNG).
  t = tmp_path / "retokenized"
  _upgen("tokenize", "--source", w / "shapes", "--text-tokenizer", w / "text_tokenizer",
         "--image-tokenizer", w / "vqgan", "--out", t, "--splits", "val", "--pixels")
  ours, theirs = records.RecordDataSource(str(t), "val"), records.RecordDataSource(str(w / "data"), "val")
  assert len(ours) == len(theirs) == 64
  by_id = {theirs[i]["id"]: i for i in range(len(theirs))}
  for i in range(len(ours)):
    assert ours.read(i) == theirs.read(by_id[ours[i]["id"]])

  # `upgen train` on the quickstart's records, as the script contract says.
  r = tmp_path / "run"
  _upgen("train", "--config", "configs/upgen.py:tiny", "--workdir", r,
         f"--config.data.dir={w / 'data'}", "--config.train.steps=3",
         "--config.train.checkpoint_every=2", "--config.train.log_every=1",
         "--config.model.num_layers=1", "--config.model.emb_dim=32", "--config.model.num_heads=2",
         "--config.model.mlp_dim=64")
  assert [row["step"] for row in _jsonl(r / "metrics.jsonl") if "loss" in row] == [1, 2, 3]
  # `upgen eval nll`: the run's likelihood of the validation images, per image token.
  nll = json.loads(_upgen("eval", "nll", "--workdir", r, "--num", 40, "--batch-size", 32
                          ).stdout.strip().splitlines()[-1])
  assert nll["family"] == "upgen" and nll["num"] == 40 and nll["split"] == "val"
  assert 0 < nll["nll_per_image_token"] < 10 and nll["bits_per_image_token"] == pytest.approx(
      nll["nll_per_image_token"] / np.log(2))

  # `upgen sample`: one PNG per sample, manifest, grid; then captions for images.
  prompts = tmp_path / "prompts.txt"
  prompts.write_text("a small red circle on the left\na blue square above a green triangle\n")
  samples = tmp_path / "samples"
  _upgen("sample", "--workdir", r, "--prompts", prompts, "--per-prompt", 2, "--out", samples)
  manifest = _jsonl(samples / "manifest.jsonl")
  assert [m["prompt"] for m in manifest] == ["a small red circle on the left"] * 2 + [
      "a blue square above a green triangle"] * 2
  assert all(os.path.exists(samples / m["image"]) for m in manifest)
  # The grid: each prompt's samples side by side in its own cell group, 32 px upscaled to 64.
  assert [(m["grid_row"], m["grid_col"]) for m in manifest] == [(0, 0), (0, 1), (1, 0), (1, 1)]
  grid = np.asarray(Image.open(samples / "grid.png"))
  assert grid.shape[0] >= 2 * 64 and grid.shape[1] >= 2 * 64
  first = np.asarray(Image.open(samples / manifest[0]["image"]))
  assert (first.repeat(2, 0).repeat(2, 1) == grid[5:5 + 64, 5:5 + 64]).all()
  # Sampling settings from the command line, recorded in the manifest; a misspelt key is
  # named. Same seed: the samples differ from the run's own settings'.
  _upgen("sample", "--workdir", r, "--prompts", prompts, "--per-prompt", 2, "--out",
         tmp_path / "hot", "--config.sample.temperature=4.0", "--config.sample.guidance_scale=0")
  hot = _jsonl(tmp_path / "hot" / "manifest.jsonl")
  assert hot[0]["settings"]["temperature"] == 4.0 and hot[0]["settings"]["guidance_scale"] == 0
  assert any(not np.array_equal(np.asarray(Image.open(samples / a["image"])),
                                np.asarray(Image.open(tmp_path / "hot" / b["image"])))
             for a, b in zip(manifest, hot))
  bad = subprocess.run([sys.executable, "-m", "upgen.cli", "sample", "--workdir", str(r),
                        "--prompts", str(prompts), "--out", str(tmp_path / "bad"),
                        "--config.sample.tempreature=0"], cwd=ROOT, capture_output=True,
                       text=True)
  assert bad.returncode == 2 and ("upgen sample: error: --config.sample.tempreature=0: "
                                  "config.sample has no key 'tempreature'") in bad.stderr
  # A prompt cut to the model's text length, and one with a word no training caption has:
  # one warning each, and the manifest says what the model read.
  odd = tmp_path / "odd_prompts.txt"
  odd.write_text("a small red circle on the left a large blue square on the right\n"
                 "a small purple circle on the left\n")
  warned = _upgen("sample", "--workdir", r, "--prompts", odd, "--per-prompt", 1, "--out",
                  tmp_path / "odd")
  warnings = [line for line in warned.stderr.splitlines() if "warning" in line]
  assert len(warnings) == 2, warned.stderr
  assert warnings[0].startswith("upgen sample: warning: prompt 1 'a small red circle on the "
                                "left a large blue square on the right': truncated to the "
                                "model's 12 tokens (it is ") and "): the model reads '" in warnings[0]
  assert warnings[1] == ("upgen sample: warning: prompt 2 'a small purple circle on the "
                         "left': 'purple' not in the training captions (the model never "
                         "learned it)")
  read = [m["model_read"] for m in _jsonl(tmp_path / "odd" / "manifest.jsonl")]
  assert read[0] != "a small red circle on the left a large blue square on the right"
  assert "a small red circle on the left".startswith(read[0][:10]) and read[1] == (
      "a small purple circle on the left")
  _upgen("sample", "--workdir", r, "--captions-for", w / "shapes" / "test" / "images",
         "--out", tmp_path / "captions")
  captions = _jsonl(tmp_path / "captions" / "captions.jsonl")
  assert len(captions) == 64 and all(isinstance(c["caption"], str) for c in captions)
  # Every sampler is reachable: unconditional images, and inpainting a region of an image
  # (that known tokens are kept is checked on token ids in tests/test_families.py).
  _upgen("sample", "--workdir", r, "--unconditional", 3, "--out", tmp_path / "uncond")
  uncond = _jsonl(tmp_path / "uncond" / "manifest.jsonl")
  assert len(uncond) == 3 and all(m["unconditional"] and m["prompt"] == "" for m in uncond)
  image = sorted((w / "shapes" / "val" / "images").iterdir())[0]
  _upgen("sample", "--workdir", r, "--prompts", prompts, "--inpaint", image, "--region",
         "0,0,16,32", "--per-prompt", 2, "--out", tmp_path / "inpaint")
  inpainted = _jsonl(tmp_path / "inpaint" / "manifest.jsonl")
  assert len(inpainted) == 2 * 2 and inpainted[0]["region"] == [0, 0, 16, 32]
  for m in inpainted:
    assert np.asarray(Image.open(tmp_path / "inpaint" / m["image"])).shape == (32, 32, 3)
  bad = subprocess.run([sys.executable, "-m", "upgen.cli", "sample", "--workdir", str(r),
                        "--prompts", str(prompts), "--inpaint", str(image), "--region",
                        "0,0,16,40", "--out", str(tmp_path / "bad")], cwd=ROOT,
                       capture_output=True, text=True)
  assert bad.returncode != 0 and "--region 0,0,16,40: need 0 <= X0 < X1 <= 32" in bad.stderr

  # A CLIP scorer on the quickstart's pixel records; best-of-N reranking by it, and
  # `upgen eval clip-score` agreeing with the scores the manifest recorded.
  scorer = tmp_path / "clip"
  _upgen("train", "--config", "configs/clip.py:tiny", "--workdir", scorer,
         f"--config.data.dir={w / 'data'}", "--config.train.steps=3", "--config.data.batch_size=16",
         "--config.model.num_layers=1", "--config.model.emb_dim=32", "--config.model.num_heads=2",
         "--config.model.mlp_dim=64", "--config.model.vision_layers=1",
         "--config.model.vision_width=32", "--config.model.vision_heads=2",
         "--config.model.vision_mlp_dim=64", "--config.model.embed_dim=16")
  assert "acc_image_to_text" in _jsonl(scorer / "metrics.jsonl")[0]
  # Its accuracy against captions one attribute away, logged by its own evaluator.
  final = [row for row in _jsonl(scorer / "metrics.jsonl") if "hard_negatives/shape" in row]
  assert final and {f"hard_negatives/{a}" for a in ("color", "count", "position", "size")
                    } <= set(final[-1])
  _upgen("sample", "--workdir", r, "--prompts", prompts, "--per-prompt", 3, "--out",
         tmp_path / "all3", "--seed", 7)
  reranked = _upgen("sample", "--workdir", r, "--prompts", prompts, "--per-prompt", 1,
                    "--candidates", 3, "--scorer", scorer, "--out", tmp_path / "best",
                    "--seed", 7)
  # A 3-step scorer is near chance on some attribute the prompts name: said in one line.
  assert "is near chance against hard negatives for" in reranked.stderr
  best = _jsonl(tmp_path / "best" / "manifest.jsonl")
  assert len(best) == 2 and all(m["candidates"] == 3 for m in best)
  scored = json.loads(_upgen("eval", "clip-score", "--scorer", scorer, "--manifest",
                             tmp_path / "all3" / "manifest.jsonl", "--retrieval", 16
                             ).stdout.strip().splitlines()[-1])
  assert scored["num"] == 6 and 0 <= scored["clip_score"] <= 100
  assert scored["scorer_retrieval"]["pairs"] == 16
  hard = scored["scorer_hard_negatives"]
  assert set(hard) == {"color", "count", "position", "shape", "size"}
  assert all(0 <= r["accuracy"] <= 1 and 0 < r["chance"] < 1 and r["num"] > 0
             for r in hard.values())
  per_sample = [s["clip_score"] for s in _jsonl(scored["scores"])]
  for p, m in enumerate(best):  # The kept sample is the best of the same three draws.
    assert m["clip_score"] == pytest.approx(max(per_sample[3 * p:3 * p + 3]), abs=1e-3)
  # FID / KID in the scorer's feature space: a set against itself is 0, samples are not.
  fid = lambda real, fake: json.loads(_upgen(
      "eval", "fid", "--real", real, "--fake", fake, "--features", f"scorer:{scorer}",
      "--kid-subsets", 5, "--kid-subset-size", 6).stdout.strip().splitlines()[-1])
  same = fid(w / "shapes" / "val", w / "shapes" / "val")
  assert same["num_real"] == same["num_fake"] == 64 and abs(same["fid"]) < 1e-3
  apart = fid(w / "shapes" / "val" / "images", tmp_path / "all3" / "manifest.jsonl")
  assert apart["num_fake"] == 6 and apart["fid"] > 1e-3 and np.isfinite(apart["kid"])
  assert cli_error("sample", "--workdir", r, "--prompts", prompts, "--candidates", 3,
                   "--out", tmp_path / "bad") == ("--candidates N (> 1) and --scorer RUN go "
                                                  "together (`upgen sample --help` lists the "
                                                  "arguments)")
  # Linear probe of the run's image features for the shapes' single-object labels, beside
  # the pixel and code baselines.
  probed = json.loads(_upgen("eval", "probe", "--workdir", r, "--data", w / "shapes", "--label",
                             "shape", "--num-train", 96, "--num-eval", 0, "--steps", 50,
                             "--baselines").stdout)
  assert probed["classes"] == ["circle", "square", "triangle"] and probed["num_train"] == 96
  assert 10 <= probed["num_eval"] <= 64 and probed["model"]["layers"] == 1
  assert probed["model"]["dims"] == 32 and probed["codes"]["dims"] == 64 * 64
  for key in ("model", "pixels", "codes"):
    assert 0 <= probed[key]["eval_accuracy"] <= 1
  # Sample quality while training (config.evals.samples): CLIP score and FID under the
  # scorer, and the shapes checker's fidelity, logged with the final evaluation.
  r2 = tmp_path / "run_evals"
  _upgen("train", "--config", "configs/upgen.py:tiny", "--workdir", r2,
         f"--config.data.dir={w / 'data'}", "--config.train.steps=2",
         "--config.model.num_layers=1", "--config.model.emb_dim=32", "--config.model.num_heads=2",
         "--config.model.mlp_dim=64", f"--config.evals.samples.scorer={scorer}",
         "--config.evals.samples.shapes_fidelity=true", "--config.evals.samples.num=8")
  final = _jsonl(r2 / "metrics.jsonl")[-1]
  assert final["step"] == 2 and 0 <= final["samples/clip_score"] <= 100
  assert final["samples/fid_scorer"] > 0 and 0 <= final["samples/shapes_fidelity"] <= 1


def cli_error(*args):
  bad = subprocess.run([sys.executable, "-m", "upgen.cli", *map(str, args)], cwd=ROOT,
                       capture_output=True, text=True)
  assert bad.returncode == 2, bad.stderr
  return bad.stderr.strip().splitlines()[-1].split("error: ", 1)[-1]
