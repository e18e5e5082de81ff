"""What the quickstart chooses for a folder, from the folder's own numbers, each choice with
its reason (printed, and kept in summary.json).

- The BPE vocabulary from the captions' vocabulary (upgen.datasets.profile): room for the
  characters and a token or two for every word the captions use more than once; a word seen
  once is spelled from pieces.
- The text length from the trained BPE's token counts of the training captions: it covers the
  longest caption (never shorter than the family's tiny length, the length the shapes recipe
  was measured at), up to MAX_TEXT_LEN; beyond that the share of captions cut is said.
- UPGen's task mix from how the captions name the images: where the captions hold words
  that only a few images share (names, not descriptions), captioning an image is recalling
  its name, a lookup that competes with drawing for the tiny model; the share of paired
  examples that take the image->text task is then 0 and the model spends itself on
  text->image (docs/notes/2026-12-01-real-folders.md, the Adwaita icons: top-1 0.016 at the
  tiny recipe's 0.5, 0.133 at 0.1, 0.398 at 0). Where the words recur (shapes, digits) the family's mix stays.
- The image tokenizer's grid and codebook from a reconstruction check (upgen/tools/vq_check.py):
  the coarsest grid and the smallest codebook whose quantized images still find themselves
  among the folder's (the fit report's ceiling) nearly as often as the finer and larger ones.
- The generator's size, batch and schedule: the family's tiny ones, printed with what was measured
  for them (within a CPU job the budget, not the folder, bounds the examples seen); the
  quickstart reports the epochs the budget held.
- The training budget from the job's: what is left after the stages before training
  (measured) and the sampling and scoring after it (an estimate per family).

The captioned shapes get the recipe measured on them (BPE 128, 12 caption tokens, UPGen's 0.5
image->text share, an 8 x 8 grid of 64 codes): the rules reduce to it there, which
tests/test_recipe.py, tests/test_vq_check.py and tests/test_end_to_end.py check on shapes.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from upgen.tokenizers import text

# The BPE always holds its specials and base alphabet (5 + 47 entries).
BPE_BASE = len(text.SPECIAL_TOKENS) + len(text.BASE_ALPHABET)
MIN_TEXT_VOCAB, MAX_TEXT_VOCAB = 128, 8192
# Two pieces per word on average: a word's merges and a leading-space variant.
TOKENS_PER_WORD = 2
MAX_TEXT_LEN = 64


@dataclasses.dataclass(frozen=True)
class Choice:
  what: str  # The quickstart flag or config key it sets.
  value: Any
  reason: str

  def line(self) -> str:
    return f"{self.what} = {self.value}: {self.reason}"


def _pow2_at_least(n: int) -> int:
  return 1 << max(0, int(n - 1).bit_length())


def text_vocab_size(captions: dict[str, Any]) -> Choice:
  """From the profile's caption statistics (profile.caption_stats)."""
  repeated = captions["vocabulary"] - captions["words_seen_once"]
  need = BPE_BASE + TOKENS_PER_WORD * repeated
  size = int(np.clip(_pow2_at_least(need), MIN_TEXT_VOCAB, MAX_TEXT_VOCAB))
  reason = (f"{captions['vocabulary']} words in the captions, {repeated} of them used more "
            f"than once: {BPE_BASE} characters and specials + {TOKENS_PER_WORD} x {repeated} "
            f"= {need}")
  if size == MIN_TEXT_VOCAB and need < size:
    reason += f", below the floor of {MIN_TEXT_VOCAB}"
  elif size == MAX_TEXT_VOCAB and need > size:
    reason += f", capped at {MAX_TEXT_VOCAB} (rarer words are spelled from pieces)"
  else:
    reason += ", rounded up to a power of two"
  return Choice("--text-vocab-size", size, reason)


def text_seq_len(token_counts: Sequence[int], family_default: int) -> Choice:
  """From the trained BPE's token count of each training caption."""
  counts = np.asarray(token_counts, np.int64)
  longest = int(counts.max())
  need = longest  # Records hold the caption's tokens only (no BOS / EOS).
  if need <= family_default:
    return Choice("config.data.text_seq_len", family_default,
                  f"the longest training caption is {longest} tokens: the family's tiny "
                  f"length {family_default} covers it")
  if need <= MAX_TEXT_LEN:
    return Choice("config.data.text_seq_len", need,
                  f"the longest training caption is {longest} tokens; the family's tiny "
                  f"length {family_default} would cut {np.mean(counts > family_default):.1%} "
                  "of them")
  cut = float(np.mean(counts > MAX_TEXT_LEN))
  return Choice("config.data.text_seq_len", MAX_TEXT_LEN,
                f"the longest training caption is {longest} tokens; at the cap of "
                f"{MAX_TEXT_LEN} {cut:.1%} of the captions are cut")


# A caption whose rarest word is on fewer training images than this names its image(s).
NAME_IMAGES = 8


def task_mix(captions: dict[str, Any], family_value: float) -> Choice:
  """UPGen's config.loss.paired_text_mask_prob from the profile's caption statistics.

  Captioning an image is description where each caption's words are shared by many images
  (shapes' colours and positions, the digits' names) and recall where the median caption
  holds a word that only a few images have (the icons' names: 3 images). The statistic is a
  count of images, not a share of captions, so it does not move with the folder's size: the
  shapes' median caption has its rarest word on 17 images at 100 training images, 466 at 2000.
  """
  rarest = captions["rarest_word_images"]["median"]
  said = (f"the median training caption's rarest word is on {rarest:g} images")
  if rarest < NAME_IMAGES:
    return Choice("config.loss.paired_text_mask_prob", 0.0,
                  f"{said} (fewer than {NAME_IMAGES}: the captions name their images): no "
                  "paired example takes the image->text task, which would be recall of each "
                  "name, so the tiny model spends itself on drawing (the family's "
                  f"{family_value:g} otherwise; this run does not caption images)")
  return Choice("config.loss.paired_text_mask_prob", family_value,
                f"{said} (at least {NAME_IMAGES}: the captions describe what images share): "
                "the family's share of image->text examples stays")


# The image tokenizer from the reconstruction check (upgen/tools/vq_check.py). A coarser grid
# is taken when its ceiling at the smallest codebook is within GRID_TOLERANCE of the finer
# grid's (a quarter of the image tokens: the generator takes ~4x the steps in the same
# minutes); then the smallest codebook whose ceiling is within CODEBOOK_TOLERANCE of the
# largest's (each doubling is another bit per token for the generator to learn; the fit, not
# the ceiling, bound on both real sets in docs/notes/2026-12-01-real-folders.md: icons 0.586 under a
# 0.859 ceiling).
GRID_TOLERANCE = 0.02
CODEBOOK_TOLERANCE = 0.05


def image_tokenizer(candidates: Sequence[dict[str, Any]], image_size: int,
                    captions_images: bool = False) -> list[Choice]:
  """--image-grid and --codebook-size from vq_check.check's rows. A run that learns to
  caption images keeps the finest grid: image->text reads the image from its tokens, and on
  the digits a 4 x 4 grid took UPGen's exact match from 0.956 to 0.544 (drawing 1.000 at
  both; docs/notes/2026-12-01-real-folders.md)."""
  by = {(r["grid"], r["codebook"]): r for r in candidates}
  grids = sorted({r["grid"] for r in candidates})
  books = sorted({r["codebook"] for r in candidates})
  small = books[0]
  grid = grids[-1]
  for g in grids[:-1] if not captions_images else ():
    if by[(g, small)]["ceiling"] >= by[(grids[-1], small)]["ceiling"] - GRID_TOLERANCE:
      grid = g
      break
  fine = by[(grids[-1], small)]
  said = ", ".join(f"{g}x{g} {by[(g, small)]['ceiling']:.3f}" for g in grids)
  if captions_images and len(grids) > 1:
    grid_reason = (f"this run learns to caption images, which reads them from their tokens: "
                   f"the finest grid (with {small} codes: {said}; on the digits 4x4 took "
                   "UPGen's image->text exact match from 0.956 to 0.544)")
  elif grid == grids[-1]:
    grid_reason = (f"with {small} codes, how often an image's quantized copy retrieves the "
                   f"image itself: {said}; a coarser grid loses more than {GRID_TOLERANCE}")
  else:
    grid_reason = (f"with {small} codes, how often an image's quantized copy retrieves the "
                   f"image itself: {said}; {grid}x{grid} is within {GRID_TOLERANCE} of "
                   f"{fine['grid']}x{fine['grid']} at {grid * grid} image tokens instead of "
                   f"{fine['grid'] ** 2} ({image_size // grid}-pixel patches)")
  top = by[(grid, books[-1])]["ceiling"]
  k = next(b for b in books if by[(grid, b)]["ceiling"] >= top - CODEBOOK_TOLERANCE)
  book_reason = (f"at {grid}x{grid}: " + ", ".join(
      f"{b} codes {by[(grid, b)]['ceiling']:.3f} ({by[(grid, b)]['psnr']:.1f} dB)"
      for b in books) + f"; the smallest within {CODEBOOK_TOLERANCE} of {books[-1]} codes")
  return [Choice("--image-grid", grid, grid_reason), Choice("--codebook-size", k, book_reason)]


# What was measured for the generator's size and batch at a fixed CPU budget, per family
# (docs/notes/2026-12-01-real-folders.md): (size, batch). Within a CPU job the budget, not the
# folder, bounds what the generator sees (UPGen: 160k-190k examples, 9 epochs of shapes' 20,000
# images, 100-170 of the real folders' 943 and 1,707), and the same size and batch were best at both
# ends.
MEASURED = {
    "upgen": ("on shapes (20,000 images) at 380 s of steps MLP 256 beat 512 (fidelity 0.50 "
              "against 0.38); on the icons (993) at 8 minutes MLP 512 drew 0.023 top-1 "
              "against 0.398",
              "on shapes batch 8 beat 16 (0.61 against 0.50); on the icons batch 8 0.398 "
              "top-1, 4 0.242, 32 0.109"),
    "dalle": ("the token families' tiny width (not varied on folders)",
              "on the icons (993 images) at 8 minutes batch 64 drew 0.711 top-1 (1,192 steps) "
              "and batch 16 0.734 (4,920 steps), equal within +-0.04: the budget buys the "
              "same ~77k examples either way"),
    "glide": ("on shapes (20,000 images) in the job's 9.2 training minutes a UNet of 32 "
              "channels x (1, 2, 4) drew 0.39 of 200 validation captions (1,697 steps), one "
              "of 64 x (1, 2, 2) 0.17 (925 steps); chosen among nine UNets for learning per "
              "CPU second (docs/glide.md, \"The CPU recipe\")",
              "on shapes (20,000 images) in 9.2 minutes batch 32 drew 0.39 of 200 "
              "validation captions, 16 0.27, 64 0.235 (docs/glide.md)"),
}


def generator(family: str, config: Any, num_train: int) -> list[Choice]:
  """The text-to-image model's size, batch and schedule: the family's tiny ones, printed
  with what was measured for them (the quickstart reports the epochs the budget held after
  training)."""
  m = config.model
  size = m.get("size", "tiny")
  if "num_layers" in m:
    size += (f": {m.num_layers} layers x {m.emb_dim} wide, {m.num_heads} heads, MLP "
             f"{m.mlp_dim}")
  unmeasured = "the family's tiny config, not measured on folders"
  size_why, batch_why = MEASURED.get(family, (unmeasured, unmeasured))
  o = config.optim
  return [
      Choice("config.model", size, f"the family's tiny size: {size_why}"),
      Choice("config.data.batch_size", config.data.batch_size,
             f"the family's tiny batch, for {num_train} training images as for any: "
             f"{batch_why}"),
      Choice("config.optim", f"lr {o.lr:g}, {o.warmup_steps} warmup steps, {o.decay} decay "
             f"to {o.final_lr_frac:g} x lr",
             "the family's tiny schedule, its length the steps the training minutes hold, "
             "fitted from the speed of the run's first steps (config.train.fit_to_time)"),
  ]


MIN_TRAIN_MINUTES = 1.0


def train_minutes(*, job_minutes: float, elapsed_s: float, after_s: float,
                  scorer_minutes: float = 0.0) -> Choice:
  """The text-to-image model's training budget: what the job's budget leaves after the
  stages before it (measured: data, tokenizers, records) and the ones after it (sampling and
  scoring, an estimate per family; the CLIP scorer's own minutes)."""
  left_s = 60 * (job_minutes - scorer_minutes) - elapsed_s - after_s
  minutes = max(MIN_TRAIN_MINUTES, round(left_s / 60, 1))
  reason = (f"the job's {job_minutes:g} minutes, less {elapsed_s:.0f} s spent before training "
            f"and {after_s:.0f} s kept for sampling and scoring")
  if scorer_minutes:
    reason += f" and {scorer_minutes:g} minutes for the scorer"
  if minutes == MIN_TRAIN_MINUTES and left_s < 60 * MIN_TRAIN_MINUTES:
    reason += f": under a minute left, the floor of {MIN_TRAIN_MINUTES:g} (the job runs over)"
  return Choice("config.train.max_minutes", minutes, reason)


def describe(choices: Sequence[Choice]) -> str:
  return "\n".join(["the recipe chosen for this folder:"] +
                   [f"  {c.line()}" for c in choices])
