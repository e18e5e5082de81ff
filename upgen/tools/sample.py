"""`upgen sample`: every sampler of a trained run, from its run directory.

  upgen sample --workdir R --prompts prompts.txt [--per-prompt 4] --out DIR
  upgen sample --workdir R --unconditional N --out DIR
  upgen sample --workdir R --prompts prompts.txt --inpaint IMAGE --region X0,Y0,X1,Y1 --out DIR
  upgen sample --workdir R --captions-for IMAGES_DIR --out DIR
  upgen sample ... --candidates N --scorer CLIP_RUN   (best of N per sample, by CLIP score)
  ... [--config.sample.KEY=VALUE ...]    (e.g. temperature, guidance_scale: the run's own
                                          config.sample otherwise)

Images: one PNG per sample, DIR/manifest.jsonl (one object per sample: prompt, image,
prompt_index, sample_index, and grid_row / grid_col, its cell in the grid) and DIR/grid.png
(near-square: a prompt's samples side by side, prompts wrapping row by row). Inpainting
regenerates every token cell that the box (pixels of IMAGE after the tokenizer's resize and
center crop; X1, Y1 exclusive) touches, from each prompt, and keeps the rest of IMAGE.
Captions: DIR/captions.jsonl. The tokenizers are the ones recorded in the run's data
metadata.json, so a run samples with exactly what it was trained on. A family that lacks a
sampler says so by name.
"""
from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import logging
import os
import sys
from typing import Optional

import numpy as np
from PIL import Image

from upgen import errors
from upgen import inference
from upgen.data import sources
from upgen.evaluators import hard_negatives
from upgen.runtime import writers


def write_samples(out_dir: str, prompts: list[str], per_prompt: int, images: np.ndarray,
                  extra: Optional[dict] = None, seen: Optional[list[str]] = None,
                  per_sample: Optional[list[dict]] = None) -> str:
  """PNGs, manifest.jsonl and grid.png; returns the manifest path. `extra` goes into every
  manifest line, `per_sample[i]` into sample i's; `seen[p]`, the text the model read for
  prompt p (`inference.read_as`), as "model_read"."""
  os.makedirs(out_dir, exist_ok=True)
  grid, cells = writers.sample_grid(images, per_prompt)
  manifest = os.path.join(out_dir, "manifest.jsonl")
  with open(manifest, "w") as f:
    for i, (image, (row, col)) in enumerate(zip(images, cells)):
      p, k = divmod(i, per_prompt)
      name = f"{p:05d}_{k:02d}.png"
      Image.fromarray(np.asarray(image, np.uint8)).save(os.path.join(out_dir, name))
      line = {"prompt": prompts[p], "image": name, "prompt_index": p, "sample_index": k,
              "grid_row": row, "grid_col": col, **(extra or {}),
              **(per_sample[i] if per_sample else {})}
      if seen is not None:
        line["model_read"] = seen[p]
      f.write(json.dumps(line) + "\n")
  Image.fromarray(grid).save(os.path.join(out_dir, "grid.png"))
  return manifest



def read_prompts(path: str) -> list[str]:
  with open(path) as f:
    prompts = [line.strip() for line in f if line.strip()]
  if not prompts:
    raise errors.DataError(f"{path}: no prompts (expected one caption per line)")
  return prompts



def _read_images(path: str, size: int) -> tuple[list[str], np.ndarray]:
  files = sorted(f for ext in ("png", "jpg", "jpeg", "webp", "bmp")
                 for f in glob.glob(os.path.join(path, f"*.{ext}")))
  if not files:
    raise errors.NotFound(f"{path}: no images (*.png, *.jpg, ...) to caption")
  return files, np.stack([sources.load_image(f, size) for f in files])




def _region(text: str) -> list[int]:
  try:
    values = [int(v) for v in text.split(",")]
  except ValueError:
    values = []
  if len(values) != 4:
    raise argparse.ArgumentTypeError(f"{text!r} is not X0,Y0,X1,Y1 (four integers)")
  return values



def main(argv: Optional[list[str]] = None) -> int:
  parser = errors.ArgumentParser(prog="upgen sample", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", required=True, help="Run directory of `upgen train`.")
  parser.add_argument("--prompts", help="Text file, one caption per line.")
  parser.add_argument("--per-prompt", type=errors.whole(1), default=None,
                      help="Samples per prompt (default: the run's config.sample.per_prompt).")
  parser.add_argument("--unconditional", type=errors.whole(1), metavar="N",
                      help="Draw N images without a caption.")
  parser.add_argument("--inpaint", metavar="IMAGE",
                      help="With --prompts and --region: regenerate a region of IMAGE.")
  parser.add_argument("--region", type=_region, metavar="X0,Y0,X1,Y1",
                      help="The box to regenerate, in pixels of IMAGE after resize and crop.")
  parser.add_argument("--captions-for", help="Folder of images to caption (image->text).")
  parser.add_argument("--out", required=True)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--batch-size", type=errors.whole(1), default=64)
  parser.add_argument("--candidates", type=errors.whole(1), default=1,
                      help="Draw N candidates per sample and keep the best by --scorer.")
  parser.add_argument("--scorer", help="A clip run (configs/clip.py) that ranks candidates.")
  parser.add_argument("--no-ema", action="store_true",
                      help="Sample from the trained parameters, not their EMA "
                           "(config.optim.ema_decay), where the run keeps one.")
  args, rest = parser.parse_known_args(argv)
  unknown = [a for a in rest if not a.startswith("--config.sample.")]
  if unknown:
    parser.error(f"unrecognized arguments: {' '.join(unknown)}")
  logging.basicConfig(format="upgen sample: warning: %(message)s", level=logging.WARNING,
                      force=True)
  if not (args.prompts or args.captions_for or args.unconditional):
    parser.error("give --prompts FILE, --unconditional N and/or --captions-for IMAGES")
  if bool(args.inpaint) != bool(args.region) or (args.inpaint and not args.prompts):
    parser.error("--inpaint IMAGE needs --region X0,Y0,X1,Y1 and --prompts FILE")
  if args.candidates < 1 or (args.candidates > 1) != bool(args.scorer):
    parser.error("--candidates N (> 1) and --scorer RUN go together")
  scorer = inference.load_scorer(args.scorer) if args.scorer else None
  run = inference.with_sample_settings(inference.load_run(args.workdir, ema=not args.no_ema), rest)
  k = args.per_prompt or run.setup.sample.per_prompt
  n = args.candidates

  def kept(images: np.ndarray) -> tuple[np.ndarray, Optional[list[dict]]]:
    if scorer is None:
      return images, None
    images, scores = inference.rerank(scorer, prompts, k, n, images)
    return images, [{"clip_score": float(x), "candidates": n} for x in scores]

  prompts = read_prompts(args.prompts) if args.prompts else []
  seen = inference.read_as(run, prompts)
  if scorer is not None and prompts:
    hard_negatives.warn_if_blind(scorer, prompts)
  if args.prompts and args.inpaint:
    images, scores = kept(inference.inpaint_images(run, prompts, k * n, args.inpaint, args.region,
                                         seed=args.seed, batch_size=args.batch_size))
    manifest = write_samples(args.out, prompts, k, images, {
        "inpaint": os.path.abspath(args.inpaint), "region": list(args.region)}, seen, scores)
    print(f"upgen sample: {len(images)} inpainted images -> {manifest}")
  elif args.prompts:
    images, scores = kept(inference.generate_images(run, prompts, k * n, seed=args.seed,
                                          batch_size=args.batch_size))
    manifest = write_samples(args.out, prompts, k, images,
                             {"settings": dataclasses.asdict(run.setup.sample)}
                             if rest else None, seen=seen, per_sample=scores)
    print(f"upgen sample: {len(images)} images -> {manifest}")
  if args.unconditional:
    images = inference.unconditional_images(run, args.unconditional, seed=args.seed,
                                  batch_size=args.batch_size)
    out = os.path.join(args.out, "unconditional") if args.prompts else args.out
    manifest = write_samples(out, [""] * len(images), 1, images, {"unconditional": True})
    print(f"upgen sample: {len(images)} unconditional images -> {manifest}")
  if args.captions_for:
    run.family.can("caption_images")
    files, images = _read_images(args.captions_for, run.image_tokenizer.image_size)
    texts = inference.caption_images(run, images, seed=args.seed, batch_size=args.batch_size)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "captions.jsonl")
    with open(path, "w") as f:
      for file, text in zip(files, texts):
        f.write(json.dumps({"image": os.path.abspath(file), "caption": text}) + "\n")
        print(f"{os.path.basename(file)}: {text}")
    print(f"upgen sample: {len(texts)} captions -> {path}")
  return 0



if __name__ == "__main__":
  sys.exit(main())
