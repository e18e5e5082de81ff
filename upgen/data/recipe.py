"""What the quickstart chooses for a folder, from the folder's own numbers, each choice with
its reason (printed, and kept in summary.json).

- The BPE vocabulary from the captions' vocabulary (upgen.data.profile): room for the
  characters and a token or two for every word the captions use more than once; a word seen
  once is spelled from pieces.
- The text length from the trained BPE's token counts of the training captions: it covers the
  longest caption (never shorter than the family's tiny length, the length the shapes recipe
  was measured at), up to MAX_TEXT_LEN; beyond that the share of captions cut is said.

The captioned shapes get the recipe measured on them (BPE 128, 12 caption tokens): the rules
reduce to it there, which tests/test_recipe.py checks on shapes folders.
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


def describe(choices: Sequence[Choice]) -> str:
  return "\n".join(["the recipe chosen for this folder:"] +
                   [f"  {c.line()}" for c in choices])
