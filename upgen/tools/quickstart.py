"""`upgen quickstart`: the whole pipeline on CPU, from pixels to scored samples.

  upgen quickstart --workdir W [--minutes M] [--source DIR]

1. data:      captioned shapes (or --source, a folder of images with captions.jsonl)
              and the recipe for it: BPE vocabulary, caption length and UPGen's task mix
              from the captions, the training minutes from the job's (upgen/tools/recipe.py),
              printed with the reasons                                 -> W/summary.json "recipe"
2. text:      BPE tokenizer trained on the training captions           -> W/text_tokenizer
3. image:     VQGAN tokenizer trained by the same trainer              -> W/vqgan
              on the grid and codebook a reconstruction check chooses (upgen/tools/vq_check.py)
              (not for families that work in pixels: --family glide)
4. tokenize:  pre-tokenized TFRecords (with the pixels) + metadata.json -> W/data
5. train:     --family's tiny config (UPGen) on the records for --minutes -> W/model
              (default: what --job-minutes 13.5 leaves after the other stages)
6. sample:    held-out test captions and validation captions           -> W/samples, W/samples_val
              and, for families that caption, validation images        -> W/captions_val.json
7. score:     caption fidelity and image->text accuracy (shapes only)  -> W/summary.json
              or, for --source, the fit report (upgen eval fit): how often samples of
              training captions retrieve their own image, held-out ranks, the tokenizer's
              ceiling                                                  -> W/summary.json "fit"
              and training captions' true images beside their samples  -> W/fit_train.png
8. (--scorer-minutes M) a CLIP scorer on the same pixel records          -> W/scorer
              and best-of---rerank-N test samples, scored              -> W/samples_best_of_N

Every stage is resumable: re-running the command reuses finished stages and resumes
training from the newest checkpoint.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import logging
import os
import sys
import time
from typing import Optional

import numpy as np

from configs import vqgan
from upgen import errors
from upgen import families
from upgen import inference
from upgen.data import readers
from upgen.data import sources
from upgen.datasets import profile
from upgen.datasets import shapes
from upgen.datasets import tokenize as tokenize_lib
from upgen.evaluators import captions as caption_eval
from upgen.evaluators import fit as fit_report
from upgen.evaluators import shapes as shapes_eval
from upgen.models import image_metrics
from upgen.tokenizers import image
from upgen.tokenizers import text
from upgen.tools import recipe
from upgen.tools import sample as sample_tool
from upgen.tools import vq_check
from upgen.train import trainer

# The whole job's budget: with the install, under 15 minutes on the 2-core CPU machine. The
# model trains for what the stages before it leave, less the time its sampling and scoring
# take after it (measured on that machine: the token families 10-25 s, image->text 10 s,
# GLIDE's 800 diffusion samples 108 s; kept with room).
JOB_MINUTES = 13.5
AFTER_TRAIN_S = {"glide": 150.0}
DEFAULT_AFTER_TRAIN_S = 75.0
RERANK_S = 60.0  # --scorer-minutes: best-of-N sampling and scoring after the scorer trains.
# The most steps a quickstart model may take; config.train.fit_to_time fits the real count
# to the budget from the speed of the run's first steps.
MOST_STEPS = 1_000_000


def _log(msg: str) -> None:
  print(f"[quickstart {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def prepare_source(source: str, out: str, val_fraction: float, seed: int) -> str:
  """A user folder -> out/{train,val}/captions.jsonl (absolute image paths), deterministic
  (sources.holdout_split, as `upgen tokenize` holds out val)."""
  if os.path.exists(os.path.join(source, "train", sources.CAPTIONS_FILE)):
    return source
  if not os.path.exists(os.path.join(source, sources.CAPTIONS_FILE)):
    raise errors.NotFound(f"--source {source}: no captions.jsonl (one "
                            '{"image": relative path, "caption": text} per line)')
  entries = sources.read_captions(source)
  train_idx, val_idx = sources.holdout_split(len(entries), val_fraction, seed)
  for split, indices in (("train", train_idx), ("val", val_idx)):
    sources.write_captions(os.path.join(out, split), [
        {**entries[i]["record"], "image": entries[i]["image"]} for i in indices])
  return out


def _captions(images_dir: str, split: str) -> list[str]:
  return [e["caption"] for e in sources.read_captions(os.path.join(images_dir, split))]


def train_text_tokenizer(captions: list[str], out: str, vocab_size: int):
  if os.path.exists(os.path.join(out, "tokenizer.json")):
    return text.load(out)
  return text.train_bpe(captions, vocab_size, out)


def vqgan_grid(image_size: int, grid: int) -> dict:
  """The tiny VQGAN's overrides for a grid x grid token grid at image_size: one level of
  channel multipliers per halving, the tiny's (1, 2, 4) extended with its widest."""
  factor = image_size // grid if grid and image_size % grid == 0 else 0
  if factor < 2 or factor & (factor - 1):
    raise errors.ConfigError(f"--image-grid {grid}: --image-size {image_size} must be the grid "
                             "times a power of two of at least 2")
  levels = factor.bit_length()  # log2(factor) halvings + the full-resolution level.
  mults = tuple(min(2 ** i, 4) for i in range(levels))
  return {"model.channel_multipliers": mults}


def image_tokenizer_check(images_dir: str, image_size: int, seed: int,
                          grids: Optional[tuple] = None, num: int = 2000):
  """vq_check's candidates on up to `num` training images."""
  rows = sources.read_captions(os.path.join(images_dir, "train"))
  picked = sorted(np.random.default_rng(seed).permutation(len(rows))[:num])
  images = np.stack([sources.load_image(rows[i]["image"], image_size) for i in picked])
  return vq_check.check(images, grids=grids or vq_check.GRIDS, seed=seed)


def train_image_tokenizer(images_dir: str, out: str, overrides: dict):
  config = vqgan.get_config("tiny")
  config.data.dir = images_dir
  config.update_from_flattened_dict(overrides)
  trainer.train(config, out)
  return image.load(out)


def tokenize(images_dir: str, out: str, text_tok, image_tok, splits: list[str],
             image_size: int) -> None:
  """Records with the pixels, and the image tokens where there is an image tokenizer."""
  if os.path.exists(os.path.join(out, "metadata.json")):
    return
  size = image_tok.image_size if image_tok is not None else image_size
  tokenize_lib.tokenize_folder(
      {s: sources.ImageFolderSource(os.path.join(images_dir, s), size)
       for s in splits}, out, text_tok, image_tok, pixels=True)


def sample_and_score(run, captions: list[str], per_prompt: int, out: str, score: bool,
                     seed: int) -> Optional[dict]:
  images = inference.generate_images(run, captions, per_prompt, seed=seed)
  manifest = sample_tool.write_samples(out, captions, per_prompt, images)
  if not score:
    return None
  result = shapes_eval.evaluate_pairs(shapes_eval.read_pairs(manifest, "prompt"), manifest)
  with open(os.path.join(out, "fidelity.json"), "w") as f:
    json.dump(result, f, indent=2)
  return result


def train_scorer(data_dir: str, out: str, minutes: float, seed: int) -> str:
  """configs/clip.py:tiny on the quickstart's pixel records for `minutes` -> its run dir."""
  config = importlib.import_module("configs.clip").get_config("tiny")
  config.data.dir = data_dir
  config.seed = seed
  config.train.max_minutes = minutes
  config.train.fit_to_time = True
  summary = trainer.train(config, out)
  _log(f"trained the CLIP scorer: step {summary['step']} ({summary['stopped']}), "
       f"val {summary['eval']}")
  return out


def reranked_fidelity(run, scorer_dir: str, captions: list[str], per_prompt: int,
                      candidates: int, out: str, seed: int) -> dict:
  """Best of `candidates` per sample by the scorer, written to `out` and scored."""
  scorer = inference.load_scorer(scorer_dir)
  images = inference.generate_images(run, captions, per_prompt * candidates, seed=seed)
  best, scores = inference.rerank(scorer, captions, per_prompt, candidates, images)
  manifest = sample_tool.write_samples(out, captions, per_prompt, best, None, None, [
      {"clip_score": float(x), "candidates": candidates} for x in scores])
  result = shapes_eval.evaluate_pairs(shapes_eval.read_pairs(manifest, "prompt"), manifest)
  result["clip_score"] = float(np.mean(scores))
  # The same draws without the scorer: the first candidate of each sample.
  single = sample_tool.write_samples(os.path.join(out, "one_candidate"), captions, per_prompt,
                                     images[::candidates])
  one = shapes_eval.evaluate_pairs(shapes_eval.read_pairs(single, "prompt"), single)
  result["one_candidate"] = {k: one[k] for k in ("caption_fidelity", "attribute_accuracy")}
  result["gain_over_one_candidate"] = {
      a: round(v - one["attribute_accuracy"][a], 4)
      for a, v in result["attribute_accuracy"].items() if "/" not in a}
  result["gain_over_one_candidate"]["fidelity"] = round(
      result["caption_fidelity"] - one["caption_fidelity"], 4)
  with open(os.path.join(out, "fidelity.json"), "w") as f:
    json.dump(result, f, indent=2)
  return result


def reconstruction_report(image_tok, images_dir: str, split: str, limit: int, score: bool,
                          lpips_weights: str = "") -> dict:
  """The image tokenizer's reconstructions of `limit` images of `split`: PSNR and SSIM (and
  LPIPS with a weights file) per image, averaged (upgen/models/image_metrics.py); on shapes also
  the caption fidelity of the reconstructions."""
  src = sources.ImageFolderSource(os.path.join(images_dir, split), image_tok.image_size)
  n = min(limit, len(src))
  examples = [src[i] for i in range(n)]
  images = np.stack([e["image"] for e in examples])
  recon = np.asarray(image_tok.decode(image_tok.encode(images)))
  lpips_params = image_metrics.load_lpips(lpips_weights) if lpips_weights else None
  report = {"split": split, "num": n,
            **image_metrics.reconstruction_metrics(images, recon, lpips_params)}
  if score:
    report["caption_fidelity"] = shapes_eval.caption_fidelity(
        list(recon), [e["caption"] for e in examples])
  return report


def main(argv: Optional[list[str]] = None) -> int:
  parser = errors.ArgumentParser(prog="upgen quickstart", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--minutes", type=errors.number(0), default=None,
                      help="Training budget of the text-to-image model, in minutes (default: "
                           "what --job-minutes leaves after the other stages).")
  parser.add_argument("--job-minutes", type=errors.number(0), default=JOB_MINUTES,
                      help="The whole job's budget, in minutes, when --minutes is not given.")
  parser.add_argument("--source", help="Folder of images with captions.jsonl instead of shapes.")
  parser.add_argument("--family", default="upgen", help="Model family to train.")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--num-train", type=errors.whole(1), default=20000, help="Shapes training examples.")
  parser.add_argument("--num-val", type=errors.whole(1), default=1000, help="Shapes validation examples.")
  parser.add_argument("--num-test", type=errors.whole(1), default=1000, help="Shapes test examples.")
  parser.add_argument("--max-captions", type=errors.whole(1), default=200,
                      help="Distinct captions sampled per split for scoring.")
  parser.add_argument("--image-size", type=errors.whole(1), default=32)
  parser.add_argument("--lpips", default="",
                      help="LPIPS-VGG weights (safetensors) for the tokenizer's report.")
  parser.add_argument("--text-vocab-size", type=errors.whole(1), default=None,
                      help="BPE vocabulary (default: chosen from the captions; 128 for shapes).")
  parser.add_argument("--vqgan-steps", type=errors.whole(1), default=None)
  parser.add_argument("--image-grid", type=errors.whole(1), default=None,
                      help="Image tokens per side (default: chosen by a reconstruction check; "
                           "8 for shapes).")
  parser.add_argument("--codebook-size", type=errors.whole(1), default=None,
                      help="Image tokenizer codes (default: chosen by the same check).")
  parser.add_argument("--batch-size", type=errors.whole(1), default=None,
                      help="The text-to-image model's batch (default: the family's tiny one).")
  parser.add_argument("--per-prompt", type=errors.whole(1), default=2)
  parser.add_argument("--num-caption-images", type=errors.whole(1), default=400,
                      help="Validation images captioned (image->text) and scored.")
  parser.add_argument("--val-fraction", type=errors.number(0, above=False, below=1), default=0.05)
  parser.add_argument("--scorer-minutes", type=errors.number(0, above=False), default=0.0,
                      help="Also train a CLIP scorer on the pixel records for this long and "
                           "report best-of-N test fidelity (0 = off; 4 minutes: "
                           "docs/notes/2026-12-01-probes-reranking-recon.md).")
  parser.add_argument("--rerank", type=errors.whole(1), default=4, help="N of best-of-N with the scorer.")
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.WARNING)
  if args.image_grid:
    vqgan_grid(args.image_size, args.image_grid)  # A bad --image-grid fails before any work.
  t0 = time.time()
  w = os.path.abspath(args.workdir)
  os.makedirs(w, exist_ok=True)
  timings = {}

  def stage(name, t):
    timings[name] = round(time.time() - t, 1)
    _log(f"{name}: {timings[name]:.1f} s")

  t = time.time()
  shapes_mode = args.source is None
  if shapes_mode:
    images_dir = os.path.join(w, "shapes")
    if not os.path.exists(os.path.join(images_dir, "shapes.json")):
      shapes.generate(images_dir, image_size=args.image_size, num_train=args.num_train,
                      num_val=args.num_val, num_test=args.num_test, seed=args.seed)
    splits = ["train", "val", "test"]
  else:
    images_dir = prepare_source(args.source, os.path.join(w, "source"), args.val_fraction,
                                args.seed)
    splits = [s for s in ("train", "val", "test")
              if os.path.exists(os.path.join(images_dir, s, "captions.jsonl"))]
  stage("data", t)

  train_captions = _captions(images_dir, "train")
  choices = []
  caption_stats = profile.caption_stats(train_captions)
  if args.text_vocab_size is None:
    choices.append(recipe.text_vocab_size(caption_stats))
  vocab_size = args.text_vocab_size or choices[-1].value
  t = time.time()
  text_tok = train_text_tokenizer(train_captions, os.path.join(w, "text_tokenizer"),
                                  vocab_size)
  stage("text tokenizer", t)
  config = _family_config(args.family)
  choices.append(recipe.text_seq_len([len(ids) for ids in text_tok.encode_batch(train_captions)],
                                     config.data.text_seq_len))
  config.data.text_seq_len = choices[-1].value
  if "paired_text_mask_prob" in config.loss:  # UPGen's task mix.
    choices.append(recipe.task_mix(caption_stats, config.loss.paired_text_mask_prob))
    config.loss.paired_text_mask_prob = choices[-1].value
  size, batch, schedule = recipe.generator(args.family, config, len(train_captions))
  choices.append(size)
  if args.batch_size:
    config.data.batch_size = args.batch_size
  else:
    choices.append(batch)
  choices.append(schedule)
  image_tok = recon = None
  tokens = _needs_image_tokens(args.family)
  grid, codebook = args.image_grid, args.codebook_size
  if tokens and (grid is None or codebook is None):
    t = time.time()
    check = image_tokenizer_check(images_dir, args.image_size, args.seed,
                                  grids=(grid,) if grid else None)
    picked = recipe.image_tokenizer(check, args.image_size, families.trains_captioning(
        families.get_family(args.family), config.loss))
    if grid is None:
      choices.append(picked[0])
      grid = picked[0].value
    if codebook is None:
      choices.append(picked[1])
      codebook = picked[1].value
    stage("reconstruction check", t)
  _log(recipe.describe(choices))

  if tokens:
    t = time.time()
    overrides = {"data.image_size": args.image_size, "seed": args.seed,
                 "model.codebook_size": codebook, **vqgan_grid(args.image_size, grid)}
    if args.vqgan_steps:
      overrides["train.steps"] = args.vqgan_steps
    image_tok = train_image_tokenizer(images_dir, os.path.join(w, "vqgan"), overrides)
    recon = reconstruction_report(image_tok, images_dir, "val", 500, shapes_mode, args.lpips)
    _log(f"image tokenizer reconstructions: {recon}")
    stage("image tokenizer", t)

  t = time.time()
  tokenize(images_dir, os.path.join(w, "data"), text_tok, image_tok, splits, args.image_size)
  stage("tokenize", t)

  t = time.time()
  config.data.dir = os.path.join(w, "data")
  config.seed = args.seed
  minutes = args.minutes
  if not minutes:
    scoring = args.scorer_minutes > 0 and shapes_mode and "test" in splits
    choices.append(recipe.train_minutes(
        job_minutes=args.job_minutes, elapsed_s=time.time() - t0,
        after_s=AFTER_TRAIN_S.get(args.family, DEFAULT_AFTER_TRAIN_S) + RERANK_S * scoring,
        scorer_minutes=args.scorer_minutes if scoring else 0.0))
    minutes = choices[-1].value
    _log(f"  {choices[-1].line()}")
  config.train.max_minutes = minutes
  config.train.fit_to_time = True  # The steps the budget holds, measured in the run itself.
  config.train.steps = MOST_STEPS
  summary = trainer.train(config, os.path.join(w, "model"))
  _log(f"trained {args.family}: step {summary['step']} ({summary['stopped']}), "
       f"val {summary['eval']}")
  epochs = summary["step"] * config.data.batch_size / len(train_captions)
  _log(f"the budget held {summary['step']} steps x batch {config.data.batch_size}: "
       f"{epochs:.1f} epochs of the {len(train_captions)} training images")
  _log(f"where the train stage's time went (s): {summary['seconds_in']}")
  stage("train", t)

  t = time.time()
  run = inference.load_run(os.path.join(w, "model"))
  results = {"timings_s": timings, "recipe": [dataclasses.asdict(c) for c in choices],
             "reconstruction": recon, "train": {
      "steps": summary["step"], "epochs": round(epochs, 2), "stopped": summary["stopped"],
      "val": summary["eval"],
      "seconds_in": summary["seconds_in"]}}
  for split, out in (("test", "samples"), ("val", "samples_val")):
    if split not in splits:
      continue
    distinct = sorted(set(_captions(images_dir, split)))
    order = np.random.default_rng(args.seed).permutation(len(distinct))[:args.max_captions]
    captions = [distinct[i] for i in sorted(order)]
    res = sample_and_score(run, captions, args.per_prompt, os.path.join(w, out), shapes_mode,
                           args.seed)
    if res is not None:
      results[f"fidelity_{split}"] = res["caption_fidelity"]
      _log(f"caption fidelity on {split} captions: {res['caption_fidelity']:.3f} "
           f"({res['num_ok']}/{res['num']})")
  # Image->text, where the run trained that task (the task mix can leave it out).
  if run.setup.captions_images and "val" in splits:
    scores, rows = caption_eval.evaluate_run(run, os.path.join(images_dir, "val"),
                                             num=args.num_caption_images, seed=args.seed)
    caption_eval.write(os.path.join(w, "captions_val.json"), scores, rows)
    results["captions_val"] = {k: scores[k] for k in ("exact_match", "attribute_accuracy")}
    _log(f"image->text on {scores['num']} val images: exact match "
         f"{scores['exact_match']:.3f}, attributes {scores['attribute_accuracy']}")
  if not shapes_mode:  # No attribute checker: how well samples find their own images.
    results["fit"] = fit_report.report(run, images_dir, seed=args.seed,
                                       grid=os.path.join(w, "fit_train.png"))
    _log(fit_report.describe(results["fit"]))
  stage("sample", t)
  if args.scorer_minutes > 0 and shapes_mode and "test" in splits:
    t = time.time()
    scorer_dir = train_scorer(os.path.join(w, "data"), os.path.join(w, "scorer"),
                              args.scorer_minutes, args.seed)
    stage("scorer", t)
    t = time.time()
    distinct = sorted(set(_captions(images_dir, "test")))
    order = np.random.default_rng(args.seed).permutation(len(distinct))[:args.max_captions]
    best = reranked_fidelity(run, scorer_dir, [distinct[i] for i in sorted(order)],
                             args.per_prompt, args.rerank,
                             os.path.join(w, "samples_best_of_N"), args.seed)
    results[f"fidelity_test_best_of_{args.rerank}"] = best["caption_fidelity"]
    results["rerank_gain"] = best["gain_over_one_candidate"]
    _log(f"caption fidelity on test captions, best of {args.rerank} by the scorer: "
         f"{best['caption_fidelity']:.3f} ({best['num_ok']}/{best['num']}), CLIP score "
         f"{best['clip_score']:.2f}")
    _log(f"best of {args.rerank} over one candidate, per attribute: " + ", ".join(
        f"{a} {g:+.3f}" for a, g in sorted(best["gain_over_one_candidate"].items())))
    stage("rerank", t)
  results["total_s"] = round(time.time() - t0, 1)
  with open(os.path.join(w, "summary.json"), "w") as f:
    json.dump(results, f, indent=2)
  _log(f"done in {results['total_s']:.0f} s; summary in {os.path.join(w, 'summary.json')}, "
       f"sample grid in {os.path.join(w, 'samples', 'grid.png')}")
  return 0


def _needs_image_tokens(family: str) -> bool:
  """Whether the family trains on image tokens (so the quickstart trains a VQGAN), not on
  the records' pixels."""
  return families.get_family(family).reads is not readers.PIXEL_RECORDS


def _family_config(family: str):
  try:
    module = importlib.import_module(f"configs.{family}")
  except ModuleNotFoundError as e:
    raise errors.UsageError(f"--family {family}: no configs/{family}.py") from e
  return module.get_config("tiny")


if __name__ == "__main__":
  sys.exit(main())
