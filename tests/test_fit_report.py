"""`upgen eval fit`: retrieval of a caption's own image in downsampled pixels."""
import json
import os
import subprocess
import sys

import numpy as np

from upgen.evaluators import fit as fit_report
from upgen import inference

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_pixel_features_are_box_means():
  image = np.zeros((32, 32, 3), np.uint8)
  image[:16, :16] = 255  # Top-left quarter white.
  f = fit_report.pixel_features(image[None], size=2).reshape(2, 2, 3)
  np.testing.assert_allclose(f[..., 0], [[1.0, 0.0], [0.0, 0.0]])
  assert fit_report.pixel_features(np.zeros((3, 8, 8, 3), np.uint8), 4).shape == (3, 48)


def test_caption_ranks_count_any_image_with_the_caption():
  gallery = np.array([[0.0], [1.0], [2.0], [3.0]])
  labels = ["zero", "one", "two", "one"]
  queries = np.array([[0.1], [2.9], [2.2], [0.0]])
  ranks = fit_report.caption_ranks(queries, ["zero", "one", "one", "nine"], gallery, labels)
  # 0.1 -> "zero" nearest; 2.9 -> image 3 ("one") nearest; 2.2 -> 2, 3, 1: "one" at rank 2;
  # "nine" is nowhere in the gallery.
  np.testing.assert_array_equal(ranks, [1, 1, 2, 0])
  s = fit_report.summarize(ranks)
  assert s == {"num": 4, "top1": 0.5, "top5": 0.75, "median_rank": 1.0,
               "mean_reciprocal_rank": (1 + 1 + 0.5) / 4}


def test_pairs_grid_puts_each_sample_beside_its_true_image():
  truth = np.zeros((3, 8, 8, 3), np.uint8)
  samples = np.full((3, 8, 8, 3), 200, np.uint8)
  truth[1] = 100
  grid = fit_report.pairs_grid(truth, samples)
  # Cells upscaled to 64 pixels; a pair's true image (left) touches its sample (1-pixel pad).
  row = grid[5 + 32]  # Through the first row of cells.
  values = [int(v) for v in row[:, 0]]
  assert values[5] == 0 and values[5 + 64 + 1] == 200
  assert 100 in {int(v) for v in grid[..., 0].ravel()}


def test_report_on_the_quickstart_run(tiny_quickstart):
  w, _ = tiny_quickstart
  run = inference.load_run(str(w / "model"))
  r = fit_report.report(run, str(w / "shapes"), num=6, size=8)
  assert r["gallery"] == 512 + 64 + 64 and r["image_size"] == 32
  assert r["train"]["split"] == "train" and r["held_out"]["split"] == "val"
  for part in ("train", "held_out", "tokenizer_ceiling"):
    assert r[part]["num"] == 6 and 0 <= r[part]["top1"] <= r[part]["top5"] <= 1
  # Every shapes caption is in the gallery, so every sample gets a rank.
  assert r["train"]["median_rank"] >= 1 and r["tokenizer_ceiling"]["psnr"] > 10
  out = subprocess.run([sys.executable, "-m", "upgen.cli", "eval", "fit", "--workdir",
                        str(w / "model"), "--data", str(w / "shapes"), "--num", "4", "--json",
                        "--config.sample.num_steps=2"],
                       cwd=ROOT, capture_output=True, text=True, check=True)
  assert json.loads(out.stdout)["train"]["num"] == 4
  bad = subprocess.run([sys.executable, "-m", "upgen.cli", "eval", "fit", "--workdir",
                        str(w / "model"), "--data", str(w / "shapes"),
                        "--config.sample.no_such_key=3"], cwd=ROOT, capture_output=True,
                       text=True)
  assert bad.returncode != 0 and "no_such_key" in bad.stderr

