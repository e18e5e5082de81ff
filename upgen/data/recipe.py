"""What the quickstart chooses for a folder, from the folder's own numbers, each choice with
its reason (printed, and kept in summary.json).

- The BPE vocabulary from the captions' vocabulary (upgen.data.profile): room for the
  characters and a token or two for every word the captions use more than once; a word seen
  once is spelled from pieces.
- The text length from the trained BPE's token counts of the training captions: it covers the
  longest caption (never shorter than the family's tiny length, the length the shapes recipe
  was measured at), up to MAX_TEXT_LEN; beyond that the share of captions cut is said.
- UPGen's task mix from how the captions name the images: where the captions hold words
  that only a few images share (names, not descriptions), captioning an image is recalling
  its name, a lookup that competes with drawing for the tiny model; the share of paired
  examples that take the image->text task is then 0 and the model spends itself on
  text->image (docs/results.md, the Adwaita icons: top-1 0.016 at the tiny recipe's 0.5,
  0.133 at 0.1, 0.398 at 0). Where the words recur (shapes, digits) the family's mix stays.
- The training budget from the job's: what is left after the stages before training
  (measured) and the sampling and scoring after it (an estimate per family).

The captioned shapes get the recipe measured on them (BPE 128, 12 caption tokens, UPGen's 0.5
image->text share): the rules reduce to it there, which tests/test_recipe.py checks on shapes
folders.
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
