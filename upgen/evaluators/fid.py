"""`upgen eval fid --real DIR --fake DIR_OR_MANIFEST --features scorer:RUN`: FID and KID.

  FID = |mu_r - mu_f|^2 + Tr(S_r + S_f - 2 (S_r S_f)^(1/2))   (Heusel et al.; pytorch-fid's
        computation: scipy's sqrtm, retried with 1e-6 I added to both covariances when the
        product's root is not finite, the real part taken)
  KID = the unbiased MMD^2 with the kernel k(x, y) = (x.y / d + 1)^3, averaged over
        --kid-subsets random subsets of --kid-subset-size from each side (Binkowski et al.;
        clean-fid's defaults 100 x 1000, smaller when the sets are), with its standard
        deviation over the subsets

over features of both image sets. --features inception:WEIGHTS takes the 2048 pool features
of pytorch-fid's Inception-v3 (evaluators/inception.py; the file from
scripts/convert_inception.py), the papers' FID; each set's images are center-cropped to the first image's square and the
network resizes them to 299. --features scorer:RUN takes a CLIP run's (or a CLIP import's)
unit-normalized image features, the way clean-fid offers CLIP features: pytorch-fid's
weights do not exist offline here, so this repository's own figures use it (docs/clip.md).
Each set is a folder of images (png, jpg; searched recursively), a folder with
captions.jsonl, or a samples manifest.jsonl. Prints one JSON line.
"""
from __future__ import annotations

import glob
import os
import sys
from typing import Optional

import numpy as np
from scipy import linalg

from upgen import errors
from upgen import inference
from upgen.data import sources
from upgen.evaluators import command
from upgen.evaluators import inception

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                     sigma2: np.ndarray, eps: float = 1e-6) -> float:
  """The Frechet distance between N(mu1, sigma1) and N(mu2, sigma2), as pytorch-fid
  computes it."""
  mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
  sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(
      np.float64)
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
    raise ValueError(f"feature sizes differ: {mu1.shape} vs {mu2.shape}")
  diff = mu1 - mu2
  sqrtm = lambda a: np.asarray(linalg.sqrtm(a))  # (SciPy < 1.16 with disp=False: a tuple.)
  with np.errstate(all="ignore"):
    covmean = sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
      offset = np.eye(sigma1.shape[0]) * eps
      covmean = sqrtm((sigma1 + offset).dot(sigma2 + offset))
  if np.iscomplexobj(covmean):
    if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
      raise ValueError(f"sqrtm has an imaginary part of {np.max(np.abs(covmean.imag))}")
    covmean = covmean.real
  return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def fid_from_features(real: np.ndarray, fake: np.ndarray) -> float:
  stats = lambda x: (np.mean(x, axis=0), np.cov(x, rowvar=False))
  return frechet_distance(*stats(real), *stats(fake))


def kid(real: np.ndarray, fake: np.ndarray, num_subsets: int = 100, subset_size: int = 1000,
        seed: int = 0) -> tuple[float, float]:
  """(mean, std) over subsets of the unbiased MMD^2 with the cubic polynomial kernel."""
  real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
  d = real.shape[1]
  m = min(subset_size, len(real), len(fake))
  if m < 2:
    raise errors.DataError("KID needs at least 2 images on each side")
  rng = np.random.default_rng(seed)
  values = []
  for _ in range(num_subsets):
    x = real[rng.choice(len(real), m, replace=False)]
    y = fake[rng.choice(len(fake), m, replace=False)]
    k = lambda a, b: (a @ b.T / d + 1) ** 3
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    off = lambda a: (a.sum() - np.trace(a)) / (m * (m - 1))
    values.append(off(kxx) + off(kyy) - 2 * kxy.mean())
  return float(np.mean(values)), float(np.std(values))


def image_paths(source: str) -> list[str]:
  """The images of a folder (recursive), of DIR/captions.jsonl, or of a manifest."""
  if source.endswith(".jsonl") or os.path.isfile(os.path.join(source, sources.CAPTIONS_FILE)):
    key = "prompt" if source.endswith(".jsonl") else "caption"
    return [r["image"] for r in sources.read_captions(source, caption_key=key)]
  if not os.path.isdir(source):
    raise errors.NotFound(f"{source}: not a folder of images, nor a .jsonl manifest")
  paths = sorted(p for p in glob.glob(os.path.join(source, "**", "*"), recursive=True)
                 if p.lower().endswith(IMAGE_EXTENSIONS))
  if not paths:
    raise errors.DataError(f"{source}: no images ({', '.join(IMAGE_EXTENSIONS)})")
  return paths


def features(source: str, kind: str, limit: int = 0) -> np.ndarray:
  """N x D features of a set of images under `kind` ("scorer:RUN" or "inception:WEIGHTS")."""
  if kind.startswith("inception:"):
    paths = image_paths(source)[:limit or None]
    side = min(sources.load_image(paths[0]).shape[:2])  # The first image's square.
    images = np.stack([sources.load_image(p, side) for p in paths])
    return inception.feature_fn(kind.split(":", 1)[1])(images)
  if not kind.startswith("scorer:"):
    raise errors.ConfigError(f"--features {kind!r}: choose scorer:RUN (a CLIP run or "
                             "import) or inception:WEIGHTS (pytorch-fid's network, "
                             "scripts/convert_inception.py)")
  scorer = inference.load_scorer(kind.split(":", 1)[1])
  paths = image_paths(source)[:limit or None]
  images = np.stack([sources.load_image(p, scorer.image_size) for p in paths])
  return scorer.image_features(images)


def main(argv: Optional[list[str]] = None) -> int:
  parser = command.parser("fid", __doc__)
  parser.add_argument("--real", required=True)
  parser.add_argument("--fake", required=True)
  parser.add_argument("--features", required=True, help="scorer:RUN or inception:WEIGHTS")
  parser.add_argument("--limit", type=errors.whole(0), default=0, help="Images per side (0: all).")
  parser.add_argument("--kid-subsets", type=errors.whole(1), default=100)
  parser.add_argument("--kid-subset-size", type=errors.whole(1), default=1000)
  args = parser.parse_args(argv)
  real = features(args.real, args.features, args.limit)
  fake = features(args.fake, args.features, args.limit)
  kid_mean, kid_std = kid(real, fake, args.kid_subsets, args.kid_subset_size)
  command.emit({"real": args.real, "fake": args.fake, "features": args.features,
                "num_real": len(real), "num_fake": len(fake),
                "fid": fid_from_features(real, fake), "kid": kid_mean, "kid_std": kid_std})
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
