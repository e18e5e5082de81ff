"""A short reconstruction check that chooses the image tokenizer's grid and codebook for a
folder, in seconds, before any tokenizer is trained.

Each candidate (grid G x G, codebook K) stands in for the VQGAN by its simplest relative:
k-means on the images' non-overlapping (S/G) x (S/G) pixel patches, K centroids, each patch
replaced by its nearest. A candidate is scored as the fit report scores the tokenizer's
ceiling (upgen/evaluators/fit.py): how often an image's quantized copy finds the image itself
(not merely one with its caption) as its nearest neighbour among all the check's images, in
16 x 16 pixels. The VQGAN reconstructs better than this relative (its decoder is not a
lookup: on the Adwaita icons 24.3 dB against 20.0 dB at 8 x 8 and 64 codes) and its ceiling
ranks the candidates the same way, so the check chooses and the trained tokenizer's own
ceiling is reported after it.

The choice (upgen.tools.recipe.image_tokenizer) weighs the ceiling against what the
generator pays: a coarser grid is a quarter of the image tokens in every sequence, a larger
codebook a wider softmax and rarer codes to learn from the same examples.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from upgen.evaluators import fit as fit_report

GRIDS = (4, 8)  # Tokens per side the check tries (16 x 16 = 256 tokens is beyond a CPU job).
CODEBOOKS = (64, 128, 256, 512)
MAX_PATCHES = 20_000  # Patches the k-means is fitted on.
KMEANS_STEPS = 12


def patches(images_NxSxSxC: np.ndarray, patch: int) -> np.ndarray:
  """(N * (S/p)^2, p * p * C) non-overlapping patches, row-major per image."""
  n, h, w, c = images_NxSxSxC.shape
  x = images_NxSxSxC.reshape(n, h // patch, patch, w // patch, patch, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(-1, patch * patch * c)


def unpatch(patches_PxD: np.ndarray, shape: Sequence[int], patch: int) -> np.ndarray:
  n, h, w, c = shape
  x = patches_PxD.reshape(n, h // patch, w // patch, patch, patch, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(n, h, w, c)


def _nearest(x_PxD: np.ndarray, centroids_KxD: np.ndarray) -> np.ndarray:
  # In float64: float32 sums differ in their last bits with the BLAS thread count, which
  # broke ties between equidistant centroids differently from one machine load to another.
  x, c = x_PxD.astype(np.float64), centroids_KxD.astype(np.float64)
  d = (c * c).sum(1)[None] - 2.0 * x @ c.T
  return d.argmin(1)


def kmeans(x_PxD: np.ndarray, k: int, *, steps: int = KMEANS_STEPS, seed: int = 0
           ) -> np.ndarray:
  """Lloyd's k-means from k distinct random points; an emptied centroid restarts at the
  point farthest from its own."""
  rng = np.random.default_rng(seed)
  distinct = np.unique(x_PxD, axis=0)
  if len(distinct) <= k:  # Every patch has its own code: quantization is exact.
    return distinct
  c = distinct[rng.choice(len(distinct), k, replace=False)].copy()
  for _ in range(steps):
    assign = _nearest(x_PxD, c)
    sums = np.zeros_like(c)
    np.add.at(sums, assign, x_PxD)
    counts = np.bincount(assign, minlength=k)
    live = counts > 0
    c[live] = sums[live] / counts[live, None]
    if not live.all():
      err = ((x_PxD - c[assign]) ** 2).sum(1)
      c[~live] = x_PxD[np.argsort(err)[::-1][:int((~live).sum())]]
  return c


def self_retrieval(query_QxD: np.ndarray, gallery_GxD: np.ndarray, own_Q: np.ndarray
                   ) -> float:
  """The share of queries whose own gallery image is (one of) its nearest: an image with an
  exact duplicate in the folder finds itself as well as the duplicate. In float64, as
  `_nearest`: ties must not depend on the BLAS thread count."""
  query_QxD, gallery_GxD = query_QxD.astype(np.float64), gallery_GxD.astype(np.float64)
  d = (np.sum(query_QxD ** 2, 1)[:, None] - 2 * query_QxD @ gallery_GxD.T
       + np.sum(gallery_GxD ** 2, 1)[None])
  own = d[np.arange(len(own_Q)), own_Q]
  return float(np.mean(own <= d.min(1) + 1e-6))


def check(images_NxSxSx3: np.ndarray, *, grids: Sequence[int] = GRIDS,
          codebooks: Sequence[int] = CODEBOOKS, num_scored: int = 500, seed: int = 0
          ) -> list[dict[str, Any]]:
  """Per candidate: grid, codebook, PSNR of the quantized images and their ceiling (the
  share of `num_scored` images whose quantized copy retrieves the image itself)."""
  size = images_NxSxSx3.shape[1]
  x = images_NxSxSx3.astype(np.float32) / 255.0
  rng = np.random.default_rng(seed)
  scored = np.sort(rng.permutation(len(x))[:num_scored])
  gallery_f = fit_report.pixel_features(images_NxSxSx3)
  out = []
  for grid in grids:
    if size % grid:
      raise ValueError(f"image size {size} is not a multiple of the grid {grid}")
    patch = size // grid
    fit_on = patches(x, patch)
    fit_on = fit_on[rng.permutation(len(fit_on))[:MAX_PATCHES]]
    for k in codebooks:
      c = kmeans(fit_on, k, seed=seed)
      q = patches(x[scored], patch)
      quantized = unpatch(c[_nearest(q, c)], x[scored].shape, patch)
      mse = float(np.mean((quantized - x[scored]) ** 2))
      query_f = fit_report.pixel_features(np.round(np.clip(quantized, 0, 1) * 255).astype(
          np.uint8))
      out.append({"grid": grid, "codebook": k,
                  "psnr": round(float(10 * np.log10(1.0 / max(mse, 1e-12))), 2),
                  "ceiling": self_retrieval(query_f, gallery_f, scored)})
  return out
