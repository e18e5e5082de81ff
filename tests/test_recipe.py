"""The quickstart's recipe rules (upgen/tools/recipe.py) and the quickstart on a folder of the
user's own: the choices printed and kept, the fit report in summary.json."""
import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image

from upgen.datasets import profile
from upgen.tools import recipe
from upgen.datasets import shapes
from upgen.data import sources

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_shapes_captions_get_the_shapes_vocabulary(tmp_path):
  shapes.generate(str(tmp_path), image_size=16, num_train=300, num_val=4, num_test=4, seed=0)
  stats = profile.caption_stats(
      [r["caption"] for r in sources.read_captions(str(tmp_path / "train"))])
  choice = recipe.text_vocab_size(stats)
  assert choice.value == 128 and "below the floor of 128" in choice.reason


def test_vocabulary_grows_with_the_words_used_more_than_once():
  def stats(vocabulary, once):
    return {"vocabulary": vocabulary, "words_seen_once": once}
  assert recipe.text_vocab_size(stats(100, 0)).value == 256  # 54 + 200 = 254.
  assert recipe.text_vocab_size(stats(1500, 1000)).value == 2048  # 54 + 1000.
  assert recipe.text_vocab_size(stats(1500, 1499)).value == 128  # Words seen once: pieces.
  big = recipe.text_vocab_size(stats(20000, 0))
  assert big.value == 8192 and "capped at 8192" in big.reason


def test_text_length_covers_the_longest_caption_and_says_what_a_cap_cuts():
  kept = recipe.text_seq_len([7, 9, 12], 12)
  assert kept.value == 12 and "covers it" in kept.reason
  longer = recipe.text_seq_len([3] * 9 + [20], 12)
  assert longer.value == 20 and "would cut 10.0% of them" in longer.reason
  capped = recipe.text_seq_len([10] * 3 + [80], 12)
  assert capped.value == 64 and "25.0% of the captions are cut" in capped.reason


def test_task_mix_leaves_captioning_out_where_captions_name_their_images(tmp_path):
  names = [f"the {w} icon" for w in ("trash", "folder", "printer", "camera", "battery")]
  names += [f"{w} folder" for w in ("music", "video", "home")] + ["printer error"]
  stats = profile.caption_stats(names)
  # "folder" is on 4 captions, "printer" on 2, "the"/"icon" on 5: each caption's rarest word is
  # on 1 to 2 images.
  assert stats["rarest_word_images"]["median"] == 1
  mix = recipe.task_mix(stats, 0.5)
  assert mix.value == 0.0 and "name their images" in mix.reason
  # Ten captions shared by 30 images each (the digits' way): description, the family's mix.
  digits = [f"a handwritten {d}" for d in "zero one two three four five six seven eight "
            "nine".split()] * 30
  kept = recipe.task_mix(profile.caption_stats(digits), 0.5)
  assert kept.value == 0.5 and "on 30 images" in kept.reason
  # Shapes keep theirs at any size, even where most captions are on one image only (at 300
  # training images 61% are): their words recur.
  for n in (100, 512):
    d = tmp_path / str(n)
    shapes.generate(str(d), image_size=16, num_train=n, num_val=4, num_test=4, seed=0)
    caps = [r["caption"] for r in sources.read_captions(str(d / "train"))]
    assert recipe.task_mix(profile.caption_stats(caps), 0.5).value == 0.5


def test_training_minutes_are_what_the_job_leaves():
  m = recipe.train_minutes(job_minutes=13.5, elapsed_s=75, after_s=75)
  assert m.value == 11.0 and "less 75 s spent before training" in m.reason
  with_scorer = recipe.train_minutes(job_minutes=13.5, elapsed_s=75, after_s=135,
                                     scorer_minutes=4)
  assert with_scorer.value == 6.0 and "4 minutes for the scorer" in with_scorer.reason
  late = recipe.train_minutes(job_minutes=2, elapsed_s=100, after_s=75)
  assert late.value == recipe.MIN_TRAIN_MINUTES and "the job runs over" in late.reason


def _folder(path, n=48):
  """Coloured squares with long, distinct captions (more tokens than the tiny length)."""
  rng = np.random.default_rng(0)
  colours = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
  rows = []
  os.makedirs(path / "images")
  for i in range(n):
    name = list(colours)[i % 3]
    x = np.full((24, 24, 3), 255, np.uint8)
    lo = int(rng.integers(0, 12))
    x[lo:lo + 12, lo:lo + 12] = colours[name]
    Image.fromarray(x).save(path / "images" / f"{i}.png")
    rows.append({"image": f"images/{i}.png", "caption": f"icon number {i} a {name} square "
                 f"drawn at offset {lo} on a plain white background with nothing else"})
  sources.write_captions(str(path), rows)


def test_quickstart_on_a_folder_chooses_prints_and_reports_the_fit(tmp_path):
  _folder(tmp_path / "mine")
  w = tmp_path / "run"
  out = subprocess.run(
      [sys.executable, "-m", "upgen.cli", "quickstart", "--workdir", str(w), "--source",
       str(tmp_path / "mine"), "--family", "dalle", "--vqgan-steps", "4", "--minutes", "0.03",
       "--max-captions", "2", "--per-prompt", "1", "--val-fraction", "0.25",
       "--image-size", "16"], cwd=ROOT, check=True, capture_output=True, text=True).stdout
  summary = json.load(open(w / "summary.json"))
  chosen = {c["what"]: c["value"] for c in summary["recipe"]}
  seq_len = chosen["config.data.text_seq_len"]
  assert chosen["--text-vocab-size"] == 128 and seq_len > 12  # Long captions, not cut.
  # --minutes given: the training budget is not chosen; the decoder-only family has no task mix.
  assert set(chosen) == {"--text-vocab-size", "config.data.text_seq_len", "config.model",
                         "config.data.batch_size", "config.optim", "--image-grid",
                         "--codebook-size"}
  # The tokenizer the check chose is the one trained (16-pixel images: 2- or 4-pixel patches).
  vq = json.load(open(w / "vqgan" / "config.json"))["model"]
  assert vq["codebook_size"] == chosen["--codebook-size"]
  assert 16 // 2 ** (len(vq["channel_multipliers"]) - 1) == chosen["--image-grid"]
  assert json.load(open(w / "data" / "metadata.json"))["image_tokenizer"]["grid"] == [
      chosen["--image-grid"]] * 2
  assert json.load(open(w / "model" / "config.json"))["data"]["text_seq_len"] == seq_len
  assert f"config.data.text_seq_len = {seq_len}: the longest training caption" in out
  fit = summary["fit"]
  assert fit["gallery"] == 48 and fit["train"]["num"] == 36 and fit["held_out"]["num"] == 12
  assert 0 <= fit["train"]["top1"] <= fit["train"]["top5"] <= 1
  assert fit["tokenizer_ceiling"]["psnr"] > 5
  assert "samples of training captions: top-1" in out


def test_upgen_quickstart_on_named_images_trains_drawing_only(tmp_path):
  _folder(tmp_path / "mine")
  w = tmp_path / "run"
  out = subprocess.run(
      [sys.executable, "-m", "upgen.cli", "quickstart", "--workdir", str(w), "--source",
       str(tmp_path / "mine"), "--vqgan-steps", "4", "--minutes", "0.03", "--max-captions",
       "2", "--per-prompt", "1", "--val-fraction", "0.25", "--image-size", "16"],
      cwd=ROOT, check=True, capture_output=True, text=True).stdout
  summary = json.load(open(w / "summary.json"))
  chosen = {c["what"]: c["value"] for c in summary["recipe"]}
  assert chosen["config.loss.paired_text_mask_prob"] == 0.0
  assert json.load(open(w / "model" / "config.json"))["loss"]["paired_text_mask_prob"] == 0.0
  assert "config.loss.paired_text_mask_prob = 0.0: the median training caption" in out
  # The run was not trained to caption: no image->text score is reported for it, and the
  # run says so (the demo leaves its caption tab out).
  assert "captions_val" not in summary and not os.path.exists(w / "captions_val.json")
  from upgen import inference
  run = inference.load_run(str(w / "model"))
  assert run.family.caption_images is not None and not run.setup.captions_images
  assert summary["fit"]["train"]["num"] == 36
  # The grid: 24 pairs (true image, sample) of 16-pixel images, upscaled to 64-pixel cells.
  grid = np.asarray(Image.open(w / "fit_train.png"))
  assert summary["fit"]["grid"] == str(w / "fit_train.png") and grid.shape[2] == 3
  assert grid.shape[0] * grid.shape[1] > 48 * 64 * 64
