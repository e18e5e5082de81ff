"""The quickstart's recipe rules (upgen/data/recipe.py) and the quickstart on a folder of the
user's own: the choices printed and kept, the fit report in summary.json."""
import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image

from upgen.data import profile
from upgen.data import recipe
from upgen.data import shapes
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
  assert json.load(open(w / "model" / "config.json"))["data"]["text_seq_len"] == seq_len
  assert f"config.data.text_seq_len = {seq_len}: the longest training caption" in out
  fit = summary["fit"]
  assert fit["gallery"] == 48 and fit["train"]["num"] == 36 and fit["held_out"]["num"] == 12
  assert 0 <= fit["train"]["top1"] <= fit["train"]["top5"] <= 1
  assert fit["tokenizer_ceiling"]["psnr"] > 5
  assert "samples of training captions: top-1" in out
