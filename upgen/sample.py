"""`upgen sample`: text->image (and image->text) from a trained run directory.

  upgen sample --workdir R --prompts prompts.txt --per-prompt 4 --out DIR
  upgen sample --workdir R --captions-for IMAGES_DIR --out DIR

Writes one PNG per sample, DIR/manifest.jsonl (one object per sample: prompt, image, index)
and DIR/grid.png (one row per prompt). Tokenizers are the ones recorded in the run's data
metadata.json, so a run samples with exactly what it was trained on.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import glob
import json
import os
import sys
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image

from upgen import families
from upgen.train import writers


@dataclasses.dataclass
class Run:
  config: ml_collections.ConfigDict
  family: families.Family
  model: Any
  params: Any
  text_tokenizer: Any
  image_tokenizer: Any


def load_run(workdir: str) -> Run:
  from upgen.data import pipeline
  from upgen.data import records
  from upgen.tokenizers import image as image_tok_lib
  from upgen.tokenizers import text as text_tok_lib
  from upgen.train import checkpoint

  config, params = checkpoint.restore_params(workdir)
  family = families.get_family(config.model.family)
  metadata = pipeline.read_metadata(config.data.dir)
  text_tok = text_tok_lib.load(
      records.tokenizer_path(config.data.dir, metadata, "text_tokenizer"))
  image_tok = image_tok_lib.load(
      records.tokenizer_path(config.data.dir, metadata, "image_tokenizer"))
  return Run(config, family, family.make_model(config), params, text_tok, image_tok)


def _run_batched(fn, arrays: list[np.ndarray], batch_size: int, seed: int) -> np.ndarray:
  """fn(*batch_arrays, rng) over rows in fixed-size batches (the last padded by repeating its
  final row, so fn compiles once); batch i gets fold_in(key(seed), i). Outputs concatenated."""
  n = len(arrays[0])
  rows = min(batch_size, n)
  rng = jax.random.key(seed)
  out = []
  for i, start in enumerate(range(0, n, batch_size)):
    stop = min(start + batch_size, n)
    padded = [jnp.asarray(np.concatenate([x[start:stop], np.repeat(x[stop - 1:stop],
                                                                   rows - (stop - start), 0)]))
              for x in arrays]
    out.append(np.asarray(fn(*padded, jax.random.fold_in(rng, i)))[:stop - start])
  return np.concatenate(out, axis=0)


def generate_images(run: Run, prompts: list[str], per_prompt: int, *, seed: int = 0,
                    batch_size: int = 64) -> np.ndarray:
  """uint8 images [len(prompts) * per_prompt, H, W, 3], prompt-major order."""
  if run.family.sample_images is None:
    raise ValueError(f"family {run.family.name!r} has no text->image sampler")
  captions = [p for p in prompts for _ in range(per_prompt)]
  ids, mask = run.text_tokenizer.pad_batch(
      run.text_tokenizer.encode_batch(captions), run.config.model.text_seq_len)
  sample = jax.jit(functools.partial(run.family.sample_images, run.params, model=run.model,
                                     config=run.config))
  tokens = _run_batched(sample, [ids, mask], batch_size, seed)
  h, w = run.image_tokenizer.grid
  return run.image_tokenizer.decode(tokens.reshape(-1, h, w))


def caption_images(run: Run, images: np.ndarray, *, seed: int = 0, batch_size: int = 64
                   ) -> list[str]:
  if run.family.caption_images is None:
    raise ValueError(f"family {run.family.name!r} has no image->text sampler")
  tokens = run.image_tokenizer.encode(images).reshape(len(images), -1)
  caption = jax.jit(functools.partial(run.family.caption_images, run.params, model=run.model,
                                      config=run.config))
  ids = _run_batched(caption, [tokens], batch_size, seed)
  return [run.text_tokenizer.decode([int(t) for t in row]) for row in ids]


def write_samples(out_dir: str, prompts: list[str], per_prompt: int, images: np.ndarray
                  ) -> str:
  """PNGs, manifest.jsonl and grid.png; returns the manifest path."""
  os.makedirs(out_dir, exist_ok=True)
  manifest = os.path.join(out_dir, "manifest.jsonl")
  with open(manifest, "w") as f:
    for i, image in enumerate(images):
      p, k = divmod(i, per_prompt)
      name = f"{p:05d}_{k:02d}.png"
      Image.fromarray(np.asarray(image, np.uint8)).save(os.path.join(out_dir, name))
      f.write(json.dumps({"prompt": prompts[p], "image": name, "prompt_index": p,
                          "sample_index": k}) + "\n")
  grid = writers.image_grid(images, columns=per_prompt if per_prompt > 1 else None)
  Image.fromarray(grid).save(os.path.join(out_dir, "grid.png"))
  return manifest


def read_prompts(path: str) -> list[str]:
  with open(path) as f:
    prompts = [line.strip() for line in f if line.strip()]
  if not prompts:
    raise ValueError(f"{path}: no prompts (expected one caption per line)")
  return prompts


def _read_images(path: str, size: int) -> tuple[list[str], np.ndarray]:
  from upgen.data import sources
  files = sorted(f for ext in ("png", "jpg", "jpeg", "webp", "bmp")
                 for f in glob.glob(os.path.join(path, f"*.{ext}")))
  if not files:
    raise FileNotFoundError(f"{path}: no images (*.png, *.jpg, ...) to caption")
  return files, np.stack([sources.load_image(f, size) for f in files])


def main(argv: Optional[list[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog="upgen sample", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", required=True, help="Run directory of `upgen train`.")
  parser.add_argument("--prompts", help="Text file, one caption per line.")
  parser.add_argument("--captions-for", help="Folder of images to caption (image->text).")
  parser.add_argument("--per-prompt", type=int, default=None)
  parser.add_argument("--out", required=True)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--batch-size", type=int, default=64)
  args = parser.parse_args(argv)
  if not args.prompts and not args.captions_for:
    parser.error("give --prompts FILE and/or --captions-for IMAGES")
  run = load_run(args.workdir)
  if args.prompts:
    prompts = read_prompts(args.prompts)
    k = args.per_prompt or int(run.config.sample.per_prompt)
    images = generate_images(run, prompts, k, seed=args.seed, batch_size=args.batch_size)
    manifest = write_samples(args.out, prompts, k, images)
    print(f"upgen sample: {len(images)} images -> {manifest}")
  if args.captions_for:
    files, images = _read_images(args.captions_for, run.image_tokenizer.image_size)
    texts = caption_images(run, images, seed=args.seed, batch_size=args.batch_size)
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
