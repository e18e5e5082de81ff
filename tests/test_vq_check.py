"""The reconstruction check that chooses the image tokenizer (upgen/tools/vq_check.py) and the
recipe's rule over its candidates (upgen.tools.recipe.image_tokenizer)."""
import os

import numpy as np
import pytest

from upgen.tools import recipe
from upgen.datasets import shapes
from upgen.data import sources
from upgen.tools import vq_check
from upgen.tools import quickstart


def test_patches_round_trip_row_major():
  x = np.arange(2 * 8 * 8 * 3, dtype=np.float32).reshape(2, 8, 8, 3)
  p = vq_check.patches(x, 4)
  assert p.shape == (2 * 4, 4 * 4 * 3)
  np.testing.assert_array_equal(p[1], x[0, :4, 4:].reshape(-1))  # Second patch: top right.
  np.testing.assert_array_equal(vq_check.unpatch(p, x.shape, 4), x)


def test_kmeans_finds_separated_clusters_and_keeps_few_distinct_points_exact():
  rng = np.random.default_rng(0)
  centres = np.array([[0, 0], [10, 0], [0, 10]], np.float32)
  x = np.concatenate([c + 0.1 * rng.standard_normal((50, 2)) for c in centres]).astype(
      np.float32)
  found = vq_check.kmeans(x, 3)
  # Each true centre has a centroid within the cluster's spread.
  assert np.abs(found[:, None] - centres[None]).sum(-1).min(0).max() < 0.2
  few = np.repeat(centres, 4, axis=0)
  np.testing.assert_array_equal(np.sort(vq_check.kmeans(few, 8), 0), np.sort(centres, 0))


PALETTE = np.array([[230, 30, 30], [30, 200, 40], [30, 40, 220], [240, 220, 30],
                    [200, 40, 200], [30, 210, 210], [128, 128, 128], [240, 140, 30]], np.uint8)


def _images(detail: bool, bases=12, variants=6, seed=0):
  """Images of palette colours constant on 8-pixel blocks, `variants` per base image; with
  `detail`, each variant also paints two 4-pixel cells in random colours (its only difference
  from the others of its base)."""
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(bases):
    base = PALETTE[rng.integers(0, len(PALETTE), (4, 4))].repeat(8, 0).repeat(8, 1)
    for _ in range(variants):
      x = base.copy()
      if detail:
        for cell in rng.choice(64, 2, replace=False):
          r, c = 4 * (cell // 8), 4 * (cell % 8)
          x[r:r + 4, c:c + 4] = rng.integers(0, 256, 3)
      out.append(x)
  return np.stack(out)


def test_check_keeps_the_grid_the_images_detail_needs():
  # Detail on 8-pixel blocks only: a 4x4 grid of 8-pixel patches holds it as well as 8x8.
  # Detail on 4-pixel cells (what tells variants apart) is lost by 8-pixel patches.
  coarse = vq_check.check(_images(False), codebooks=(64, 512), num_scored=72)
  fine = vq_check.check(_images(True), codebooks=(64, 512), num_scored=72)
  by_coarse = {(r["grid"], r["codebook"]): r for r in coarse}
  by_fine = {(r["grid"], r["codebook"]): r for r in fine}
  assert by_coarse[(4, 64)]["ceiling"] == by_coarse[(8, 64)]["ceiling"] == 1.0
  # 64 codes of 4-pixel patches hold every colour; of 8-pixel patches they blur some marks
  # into their neighbours', and those variants find another as their nearest.
  assert by_fine[(8, 64)]["ceiling"] == 1.0 and by_fine[(4, 64)]["ceiling"] < 0.97
  assert by_fine[(4, 64)]["psnr"] < by_fine[(8, 64)]["psnr"] - 5
  assert by_fine[(4, 512)]["ceiling"] == 1.0  # 512 codes: fewer distinct patches than that.
  assert [c.value for c in recipe.image_tokenizer(coarse, 32)] == [4, 64]
  assert [c.value for c in recipe.image_tokenizer(fine, 32)] == [8, 64]


def _rows(ceilings):
  return [{"grid": g, "codebook": k, "psnr": 20.0, "ceiling": c}
          for (g, k), c in ceilings.items()]


def test_rule_takes_the_coarser_grid_and_smaller_codebook_only_within_tolerance():
  rows = _rows({(4, 64): 0.90, (4, 512): 0.93, (8, 64): 0.91, (8, 512): 0.99})
  grid, book = recipe.image_tokenizer(rows, 32)
  assert (grid.value, book.value) == (4, 64)  # 0.90 >= 0.91 - 0.02; 0.90 >= 0.93 - 0.05.
  assert "16 image tokens instead of 64 (8-pixel patches)" in grid.reason
  # A run that captions images keeps the finest grid whatever the coarser one scores.
  grid, book = recipe.image_tokenizer(_rows({(4, 64): 0.90, (4, 512): 0.93, (8, 64): 0.91,
                                             (8, 512): 0.99}), 32, captions_images=True)
  assert grid.value == 8 and "learns to caption images" in grid.reason
  assert book.value == 512  # 0.91 < 0.99 - 0.05 at 8x8.
  rows = _rows({(4, 64): 0.85, (4, 512): 0.93, (8, 64): 0.91, (8, 128): 0.95,
                (8, 512): 0.99})
  grid, book = recipe.image_tokenizer(rows, 32)
  assert (grid.value, book.value) == (8, 128)  # 0.91 < 0.99 - 0.05 <= 0.95.
  assert "a coarser grid loses more than 0.02" in grid.reason
  assert "64 codes 0.910" in book.reason


def test_shapes_get_the_grid_and_codebook_measured_on_them(tmp_path):
  shapes.generate(str(tmp_path), image_size=32, num_train=400, num_val=4, num_test=4, seed=0)
  rows = sources.read_captions(str(tmp_path / "train"))
  images = np.stack([sources.load_image(r["image"], 32) for r in rows])
  grid, book = recipe.image_tokenizer(vq_check.check(images, num_scored=200), 32)
  assert (grid.value, book.value) == (8, 64)


def test_vqgan_grid_levels_and_bad_grids():
  assert quickstart.vqgan_grid(32, 8) == {"model.channel_multipliers": (1, 2, 4)}
  assert quickstart.vqgan_grid(32, 4) == {"model.channel_multipliers": (1, 2, 4, 4)}
  assert quickstart.vqgan_grid(16, 8) == {"model.channel_multipliers": (1, 2)}
  for size, grid in ((32, 32), (32, 6), (24, 8)):
    with pytest.raises(Exception, match=f"--image-grid {grid}"):
      quickstart.vqgan_grid(size, grid)


def test_a_bad_grid_fails_before_any_work(tmp_path):
  import subprocess
  import sys
  from tests.test_recipe import ROOT
  out = subprocess.run(
      [sys.executable, "-m", "upgen.cli", "quickstart", "--workdir", str(tmp_path / "w"),
       "--image-grid", "6"], cwd=ROOT, capture_output=True, text=True)
  assert out.returncode == 2 and "--image-grid 6: --image-size 32 must be" in out.stderr
  assert not os.path.exists(tmp_path / "w")


def test_generator_choices_name_the_size_and_batch():
  from configs import bart
  from configs import dalle
  from configs import glide
  from configs import upgen as upgen_config
  size, batch, schedule = recipe.generator("upgen", upgen_config.get_config("tiny"), 993)
  assert size.value == "tiny: 4 layers x 128 wide, 4 heads, MLP 256"
  assert "MLP 512 drew 0.023" in size.reason
  assert batch.value == 8 and "for 993 training images" in batch.reason
  assert "batch 8 0.398 top-1" in batch.reason
  assert schedule.value == "lr 0.003, 50 warmup steps, cosine decay to 0.1 x lr"
  size, batch, _ = recipe.generator("dalle", dalle.get_config("tiny"), 50)
  assert batch.value == 64 and "batch 64 drew 0.711" in batch.reason
  size, batch, _ = recipe.generator("glide", glide.get_config("tiny"), 50)
  assert size.value == "tiny" and batch.value == 32 and "batch 32 drew 0.39" in batch.reason
  assert "32 channels x (1, 2, 4) drew 0.39" in size.reason
  size, batch, _ = recipe.generator("bart", bart.get_config("tiny"), 50)
  assert "not measured on folders" in batch.reason
