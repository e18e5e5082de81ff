"""`upgen eval fit`: has a run learned its folder? Retrieval of a caption's own image.

  upgen eval fit --workdir RUN --data DIR [--num 128] [--size 16] [--seed 0]
      [--grid PNG] [--config.sample.KEY=VALUE ...]   (the run's own config.sample otherwise)

For any folder of captioned images, in a fixed small feature space (the images downsampled to
--size x --size RGB, Euclidean): every image of the folder's splits is the gallery. A sample
drawn for a *training* caption is a hit at k when one of its k nearest gallery images carries
that caption (so a caption shared by many images, like a digit's name, is a hit on any of
them, and a caption of one image only on that image); for *held-out* captions the report
gives the rank of the nearest image with the caption (1 = the sample's nearest). Beside them,
the ceiling: the same retrieval for the image tokenizer's reconstructions of the true images,
and their PSNR (families that draw pixels have no tokenizer: no ceiling).
"""
from __future__ import annotations

import json
import sys
from typing import Any, Optional, Sequence

import numpy as np
from PIL import Image

from upgen import errors
from upgen import inference
from upgen.data import sources
from upgen.datasets import profile
from upgen.evaluators import command
from upgen.models import image_metrics
from upgen.runtime import writers


def pixel_features(images_NxHxWx3: np.ndarray, size: int = 16) -> np.ndarray:
  """uint8 images -> N x (size * size * 3) float32 in [0, 1] (box-downsampled)."""
  out = [np.asarray(Image.fromarray(np.asarray(x, np.uint8)).resize(
      (size, size), Image.Resampling.BOX), np.float32).reshape(-1) / 255.0
         for x in images_NxHxWx3]
  return np.stack(out)


def caption_ranks(query_QxD: np.ndarray, captions: Sequence[str], gallery_GxD: np.ndarray,
                  gallery_captions: Sequence[str]) -> np.ndarray:
  """Per query, the 1-based rank (by Euclidean distance) of the nearest gallery image that
  carries the query's caption; 0 where no gallery image does."""
  d = (np.sum(query_QxD ** 2, 1)[:, None] - 2 * query_QxD @ gallery_GxD.T
       + np.sum(gallery_GxD ** 2, 1)[None])
  order = np.argsort(d, axis=1, kind="stable")
  labels = np.asarray(gallery_captions, dtype=object)
  ranks = np.zeros(len(query_QxD), np.int64)
  for i, caption in enumerate(captions):
    hits = np.flatnonzero(labels[order[i]] == caption)
    ranks[i] = hits[0] + 1 if hits.size else 0
  return ranks


def summarize(ranks: np.ndarray) -> dict[str, Any]:
  found = ranks[ranks > 0]
  return {"num": int(len(ranks)), "top1": float(np.mean(ranks == 1)),
          "top5": float(np.mean((ranks >= 1) & (ranks <= 5))),
          "median_rank": float(np.median(found)) if found.size else None,
          "mean_reciprocal_rank": float(np.mean(np.where(ranks > 0, 1.0 / np.maximum(ranks, 1),
                                                        0.0)))}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
  return float(np.mean(image_metrics.psnr(a, b)))


def pairs_grid(truth_NxHxWx3: np.ndarray, samples_NxHxWx3: np.ndarray) -> np.ndarray:
  """Each true image with the sample drawn for its caption to its right, pairs in a grid."""
  pairs = np.stack([truth_NxHxWx3, samples_NxHxWx3], axis=1).reshape(
      -1, *truth_NxHxWx3.shape[1:])
  return writers.sample_grid(pairs, per_prompt=2)[0]


def report(run: Any, data_dir: str, *, num: int = 128, size: int = 16, seed: int = 0,
           grid: Optional[str] = None, grid_num: int = 24) -> dict[str, Any]:
  """The fit report of a loaded run (upgen.inference.Run) on a folder (see the docstring).
  With `grid`, a PNG there of the first `grid_num` training captions' true images, each with
  its sample beside it."""
  splits = profile.folder_entries(data_dir)
  image_size = (run.image_tokenizer.image_size if run.image_tokenizer is not None
                else run.setup.spec.image_size)
  gallery_rows = [r for rows in splits.values() for r in rows]
  gallery = np.stack([sources.load_image(r["image"], image_size) for r in gallery_rows])
  gallery_f = pixel_features(gallery, size)
  gallery_captions = [r["caption"] for r in gallery_rows]
  index = {id(r): i for i, r in enumerate(gallery_rows)}
  held_out = sorted((s for s in splits if s != "train"), key=lambda s: (s != "val", s))
  parts = {"train": "train" if "train" in splits else next(iter(splits))}
  if held_out and parts["train"] != held_out[0]:
    parts["held_out"] = held_out[0]
  rng = np.random.default_rng(seed)
  out: dict[str, Any] = {"data": data_dir, "gallery": len(gallery_rows), "feature_size": size,
                         "image_size": image_size}
  for name, split in parts.items():
    rows = splits[split]
    picked = [rows[i] for i in sorted(rng.permutation(len(rows))[:num])]
    captions = [r["caption"] for r in picked]
    images = inference.generate_images(run, captions, 1, seed=seed)
    ranks = caption_ranks(pixel_features(images, size), captions, gallery_f, gallery_captions)
    out[name] = {"split": split, **summarize(ranks)}
    if name != "train":
      continue
    truth = gallery[[index[id(r)] for r in picked]]
    if grid:
      Image.fromarray(pairs_grid(truth[:grid_num], images[:grid_num])).save(grid)
      out["grid"] = grid
    if run.image_tokenizer is not None:
      recon = run.image_tokenizer.decode(run.image_tokenizer.encode(truth))
      ceiling = caption_ranks(pixel_features(recon, size), captions, gallery_f,
                              gallery_captions)
      out["tokenizer_ceiling"] = {"psnr": psnr(truth, recon), **summarize(ceiling)}
  return out


def describe(r: dict[str, Any]) -> str:
  lines = [f"fit on {r['data']} ({r['gallery']} images, nearest neighbours of "
           f"{r['feature_size']}x{r['feature_size']} RGB):"]
  for name, what in (("train", "samples of training captions"),
                     ("held_out", "samples of held-out captions"),
                     ("tokenizer_ceiling", "the tokenizer's reconstructions (ceiling)")):
    if name in r:
      x = r[name]
      extra = f", PSNR {x['psnr']:.1f} dB" if "psnr" in x else ""
      lines.append(f"  {what}: top-1 {x['top1']:.3f}, top-5 {x['top5']:.3f}, median rank "
                   f"{x['median_rank']}{extra} (n={x['num']})")
  return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
  parser = command.parser("fit", __doc__)
  parser.add_argument("--workdir", required=True, help="A run of a family that draws images.")
  parser.add_argument("--data", required=True,
                      help="The folder it trained on (captions.jsonl, or train/ and val/).")
  parser.add_argument("--num", type=errors.whole(1), default=128, help="Captions per split.")
  parser.add_argument("--size", type=errors.whole(1), default=16, help="Feature size (pixels per side).")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--grid", help="Also write a PNG of training captions' true images, "
                      "each with its sample beside it.")
  parser.add_argument("--json", action="store_true")
  args, rest = parser.parse_known_args(argv)
  unknown = [a for a in rest if not a.startswith("--config.sample.")]
  if unknown:
    parser.error(f"unrecognized arguments: {' '.join(unknown)}")
  if args.num < 1 or args.size < 1:
    raise errors.ConfigError(f"--num {args.num}, --size {args.size}: both must be >= 1")
  run = inference.with_sample_settings(inference.load_run(args.workdir), rest)
  run.family.can("sample_images")
  r = report(run, args.data, num=args.num, size=args.size, seed=args.seed, grid=args.grid)
  print(json.dumps(r, indent=2) if args.json else describe(r))
  return 0


if __name__ == "__main__":
  sys.exit(main())
