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
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image

from upgen import errors
from upgen import families
from upgen.train import writers

log = logging.getLogger("upgen.sample")


@dataclasses.dataclass
class Run:
  config: ml_collections.ConfigDict
  setup: families.Setup
  params: Any
  text_tokenizer: Any
  image_tokenizer: Any

  @property
  def family(self) -> families.Family:
    return self.setup.family


def load_run(workdir: str, ema: bool = True) -> Run:
  """A trained run, its parameters (the EMA where the run keeps one and `ema`) and its data's
  tokenizers. Records without an image tokenizer (pixel records for a family that samples
  pixels) give image_tokenizer None."""
  from upgen.data import records
  from upgen.tokenizers import image as image_tok_lib
  from upgen.tokenizers import text as text_tok_lib
  from upgen.train import checkpoint

  config, setup, params = checkpoint.restore_params(workdir, ema=ema)
  metadata = records.read_metadata(config.data.dir)
  text_tok = text_tok_lib.load(
      records.tokenizer_path(config.data.dir, metadata, "text_tokenizer"))
  image_tok = None
  if metadata.get("image_tokenizer"):
    image_tok = image_tok_lib.load(
        records.tokenizer_path(config.data.dir, metadata, "image_tokenizer"))
  return Run(config, setup, params, text_tok, image_tok)


def with_sample_settings(run: Run, overrides: Sequence[str]) -> Run:
  """The run with `--config.sample.KEY=VALUE` overrides applied to its sampling settings,
  parsed as `upgen train` parses its overrides (ml_collections' config flags: each value
  read as the type the run's config.sample gives the key)."""
  if not overrides:
    return run
  from absl import flags
  from ml_collections import config_flags
  sample = ml_collections.ConfigDict(run.config.to_dict()).get("sample")
  for arg in overrides:
    key = arg[len("--config.sample."):].partition("=")[0]
    if sample is None or key not in sample:
      raise errors.ConfigError(f"{arg}: config.sample has no key {key!r} in this run (its "
                               f"keys: {', '.join(sorted(sample or {}))})")
  fv = flags.FlagValues()
  argv = ["upgen sample", *overrides]
  config_flags.DEFINE_config_dict("config", ml_collections.ConfigDict({"sample": sample}),
                                  flag_values=fv, lock_config=True, sys_argv=argv)
  try:
    fv(argv)
  except flags.Error as e:
    raise errors.ConfigError(str(e)) from None
  config = ml_collections.ConfigDict(run.config.to_dict())
  config.sample = fv.config.sample
  settings = run.family.sample_config(config.sample)
  return dataclasses.replace(run, config=config,
                             setup=dataclasses.replace(run.setup, sample=settings))


def run_batched(fn: Callable[..., jax.Array], params: Any, arrays: Sequence[np.ndarray],
                 batch_size: int, seed: int) -> np.ndarray:
  """fn(params, *batch_arrays, rng) over rows in fixed-size batches (the last padded by
  repeating its final row, so fn compiles once); batch i gets fold_in(key(seed), i)."""
  n = len(arrays[0])
  rows = min(batch_size, n)
  rng = jax.random.key(seed)
  out = []
  for i, start in enumerate(range(0, n, batch_size)):
    stop = min(start + batch_size, n)
    padded = [jnp.asarray(np.concatenate([x[start:stop], np.repeat(x[stop - 1:stop],
                                                                   rows - (stop - start), 0)]))
              for x in arrays]
    out.append(np.asarray(fn(params, *padded, jax.random.fold_in(rng, i)))[:stop - start])
  return np.concatenate(out, axis=0)


def to_pixels(run: Run, out: np.ndarray) -> np.ndarray:
  """A sampler's output (token ids, or pixels already) -> uint8 images."""
  out = np.asarray(out)
  if out.dtype == np.uint8 and out.ndim == 4:
    return out
  if run.image_tokenizer is None:
    raise errors.DataError(f"config.data.dir={run.config.data.dir}: the records have no image "
                           "tokenizer to decode this family's image tokens")
  return run.image_tokenizer.decode(out.reshape((-1,) + tuple(run.image_tokenizer.grid)))


def prompt_notes(run: Run, prompt: str) -> tuple[str, list[str]]:
  """(the text the model reads for `prompt`: cut to its text length, as the tokenizer decodes
  it; notes on what it cut and on words the training captions did not have (the text
  tokenizer's caption_words.txt) or characters it does not know)."""
  tok, length = run.text_tokenizer, run.setup.spec.text_seq_len
  ids = tok.encode(prompt)
  seen, notes = tok.decode(ids[:length]), []
  if len(ids) > length:
    notes.append(f"truncated to the model's {length} tokens (it is {len(ids)}): the model "
                 f"reads {seen!r}")
  unknown = tok.unknown_words(prompt)
  if unknown:
    notes.append(f"{', '.join(repr(w) for w in unknown)} not in the training captions (the "
                 f"model never learned {'it' if len(unknown) == 1 else 'them'})")
  return seen, notes


def read_as(run: Run, prompts: Sequence[str]) -> list[str]:
  """The text the model reads for each prompt (`prompt_notes`), with a warning per note."""
  seen = []
  for i, prompt in enumerate(prompts, start=1):
    text, notes = prompt_notes(run, prompt)
    seen.append(text)
    for note in notes:
      log.warning("prompt %d %r: %s", i, prompt, note)
  return seen


def caption_ids(run: Run, prompts: Sequence[str], per_prompt: int
                ) -> tuple[np.ndarray, np.ndarray]:
  """(ids, mask) [len(prompts) * per_prompt, Lt], prompt-major, cut to the model's text length."""
  captions = [p for p in prompts for _ in range(per_prompt)]
  return run.text_tokenizer.pad_batch(run.text_tokenizer.encode_batch(captions),
                                      run.setup.spec.text_seq_len)


def generate_images(run: Run, prompts: list[str], per_prompt: int, *, seed: int = 0,
                    batch_size: int = 64) -> np.ndarray:
  """uint8 images [len(prompts) * per_prompt, H, W, 3], prompt-major order."""
  sample = jax.jit(run.setup.bind("sample_images"))
  ids, mask = caption_ids(run, prompts, per_prompt)
  return to_pixels(run, run_batched(sample, run.params, [ids, mask], batch_size, seed))


def unconditional_images(run: Run, num: int, *, seed: int = 0, batch_size: int = 64
                         ) -> np.ndarray:
  """uint8 images [num, H, W, 3] drawn without a caption."""
  sample = jax.jit(run.setup.bind("unconditional_images"), static_argnames="num")
  rng = jax.random.key(seed)
  out = [np.asarray(sample(run.params, jax.random.fold_in(rng, i),
                           num=min(batch_size, num - start)))
         for i, start in enumerate(range(0, num, batch_size))]
  return to_pixels(run, np.concatenate(out))


def region_known(region: Sequence[int], image_size: int, grid: Sequence[int]) -> np.ndarray:
  """bool Li (raster order): False on every token cell the pixel box X0,Y0,X1,Y1 (X1, Y1
  exclusive) touches, True elsewhere."""
  x0, y0, x1, y1 = (int(v) for v in region)
  if not (0 <= x0 < x1 <= image_size and 0 <= y0 < y1 <= image_size):
    raise errors.ConfigError(
        f"--region {x0},{y0},{x1},{y1}: need 0 <= X0 < X1 <= {image_size} and 0 <= Y0 < Y1 <= "
        f"{image_size} (pixels of the {image_size}x{image_size} image the tokenizer sees; X1 "
        "and Y1 exclusive)")
  rows, cols = grid
  cell_h, cell_w = image_size / rows, image_size / cols
  r0, r1 = int(y0 // cell_h), int(np.ceil(y1 / cell_h))
  c0, c1 = int(x0 // cell_w), int(np.ceil(x1 / cell_w))
  known = np.ones((rows, cols), bool)
  known[r0:r1, c0:c1] = False
  return known.reshape(-1)


def inpaint_tokens(run: Run, image_HxWx3: np.ndarray, region: Sequence[int]
                   ) -> tuple[np.ndarray, np.ndarray]:
  """(the image's tokens Li, known Li: False on the token cells `region` touches); the image
  is uint8 at the tokenizer's size."""
  tok = run.image_tokenizer
  return (tok.encode(image_HxWx3[None]).reshape(-1),
          region_known(region, tok.image_size, tok.grid))


def inpaint_images(run: Run, prompts: list[str], per_prompt: int, image_path: str,
                   region: Sequence[int], *, seed: int = 0, batch_size: int = 64) -> np.ndarray:
  """uint8 images [len(prompts) * per_prompt, H, W, 3]: IMAGE with `region` regenerated."""
  from upgen.data import sources
  fn = jax.jit(run.setup.bind("inpaint"))
  tokens_Li, known_Li = inpaint_tokens(
      run, sources.load_image(image_path, run.image_tokenizer.image_size), region)
  ids, mask = caption_ids(run, prompts, per_prompt)
  n = len(ids)
  tokens = np.broadcast_to(tokens_Li, (n, tokens_Li.size)).copy()
  known = np.broadcast_to(known_Li, (n, known_Li.size)).copy()
  return to_pixels(run, run_batched(fn, run.params, [tokens, known, ids, mask], batch_size,
                                   seed))


def caption_images(run: Run, images: np.ndarray, *, seed: int = 0, batch_size: int = 64
                   ) -> list[str]:
  caption = jax.jit(run.setup.bind("caption_images"))
  tokens = run.image_tokenizer.encode(images).reshape(len(images), -1)
  ids = run_batched(caption, run.params, [tokens], batch_size, seed)
  return [run.text_tokenizer.decode([int(t) for t in row]) for row in ids]


def rerank(scorer: Any, prompts: list[str], per_prompt: int, candidates: int,
           images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Best of each `candidates` consecutive images by the scorer's CLIP score with their
  prompt: images [P * K * N] prompt-major -> (images [P * K], scores [P * K])."""
  from upgen import scorer as scorer_lib
  p, k, n = len(prompts), per_prompt, candidates
  scores = scorer_lib.clip_score(scorer.cosine(
      images, [q for q in prompts for _ in range(k * n)])).reshape(p * k, n)
  best = np.argmax(scores, axis=1)
  rows = np.arange(p * k) * n + best
  return images[rows], scores[np.arange(p * k), best]


def write_samples(out_dir: str, prompts: list[str], per_prompt: int, images: np.ndarray,
                  extra: Optional[dict] = None, seen: Optional[list[str]] = None,
                  per_sample: Optional[list[dict]] = None) -> str:
  """PNGs, manifest.jsonl and grid.png; returns the manifest path. `extra` goes into every
  manifest line, `per_sample[i]` into sample i's; `seen[p]`, the text the model read for
  prompt p (`read_as`), as "model_read"."""
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
  from upgen.data import sources
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
  parser = argparse.ArgumentParser(prog="upgen sample", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", required=True, help="Run directory of `upgen train`.")
  parser.add_argument("--prompts", help="Text file, one caption per line.")
  parser.add_argument("--per-prompt", type=int, default=None,
                      help="Samples per prompt (default: the run's config.sample.per_prompt).")
  parser.add_argument("--unconditional", type=int, metavar="N",
                      help="Draw N images without a caption.")
  parser.add_argument("--inpaint", metavar="IMAGE",
                      help="With --prompts and --region: regenerate a region of IMAGE.")
  parser.add_argument("--region", type=_region, metavar="X0,Y0,X1,Y1",
                      help="The box to regenerate, in pixels of IMAGE after resize and crop.")
  parser.add_argument("--captions-for", help="Folder of images to caption (image->text).")
  parser.add_argument("--out", required=True)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--batch-size", type=int, default=64)
  parser.add_argument("--candidates", type=int, default=1,
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
  scorer = None
  if args.scorer:
    from upgen import scorer as scorer_lib
    scorer = scorer_lib.load(args.scorer)
  run = with_sample_settings(load_run(args.workdir, ema=not args.no_ema), rest)
  k = args.per_prompt or run.setup.sample.per_prompt
  n = args.candidates

  def kept(images: np.ndarray) -> tuple[np.ndarray, Optional[list[dict]]]:
    if scorer is None:
      return images, None
    images, scores = rerank(scorer, prompts, k, n, images)
    return images, [{"clip_score": float(x), "candidates": n} for x in scores]

  prompts = read_prompts(args.prompts) if args.prompts else []
  seen = read_as(run, prompts)
  if args.prompts and args.inpaint:
    images, scores = kept(inpaint_images(run, prompts, k * n, args.inpaint, args.region,
                                         seed=args.seed, batch_size=args.batch_size))
    manifest = write_samples(args.out, prompts, k, images, {
        "inpaint": os.path.abspath(args.inpaint), "region": list(args.region)}, seen, scores)
    print(f"upgen sample: {len(images)} inpainted images -> {manifest}")
  elif args.prompts:
    images, scores = kept(generate_images(run, prompts, k * n, seed=args.seed,
                                          batch_size=args.batch_size))
    manifest = write_samples(args.out, prompts, k, images,
                             {"settings": dataclasses.asdict(run.setup.sample)}
                             if rest else None, seen=seen, per_sample=scores)
    print(f"upgen sample: {len(images)} images -> {manifest}")
  if args.unconditional:
    images = unconditional_images(run, args.unconditional, seed=args.seed,
                                  batch_size=args.batch_size)
    out = os.path.join(args.out, "unconditional") if args.prompts else args.out
    manifest = write_samples(out, [""] * len(images), 1, images, {"unconditional": True})
    print(f"upgen sample: {len(images)} unconditional images -> {manifest}")
  if args.captions_for:
    run.family.can("caption_images")
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
