"""`upgen eval text-ppl --workdir W --text FILE`: a language model's skill at plain text.

W is a run directory (its latest checkpoint; the text tokenizer of its records) or the INIT
directory of `upgen import hf` before any training (its tokenizer/). Every non-empty line
of FILE is one sequence, tokenized without added special tokens and cut at the model's
original context (its position table). The result, one JSON line:

  nats_per_token  the mean of -log p(token_i | tokens_<i) over every i >= 1 of every line
  perplexity      exp(nats_per_token): the number transformers gives for the same model and
                  lines (tests/test_gpt2_import.py checks it)
  tokens, lines   what was scored

The same figure is an evaluator for training (`config.evals.NAME.type = "text_ppl"`,
upgen/evaluators/registry.py), logged as NAME/perplexity beside the per-modality losses.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
import sys
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from upgen import errors
from upgen import families
from upgen import inference
from upgen.data import records
from upgen.data.spec import DataSpec
from upgen.evaluators import command
from upgen.evaluators import registry
from upgen.runtime import init_from
from upgen.runtime import restore
from upgen.tokenizers import text

BUCKET = 32  # Batches are padded to a multiple of this many tokens (fewer compiles).


def read_lines(path: str, tokenizer: Any, context: int, max_lines: int = 0
               ) -> list[list[int]]:
  """Token ids of every non-empty line (the first `max_lines`; 0: all), cut at `context`;
  lines of fewer than two tokens score nothing and are dropped."""
  if not os.path.isfile(path):
    raise errors.NotFound(f"--text {path}: no such file")
  with open(path, encoding="utf-8") as f:
    lines = [line.rstrip("\n") for line in f if line.strip()]
  if max_lines:
    lines = lines[:max_lines]
  ids = [seq[:context] for seq in tokenizer.encode_batch(lines)]
  ids = [seq for seq in ids if len(seq) >= 2]
  if not ids:
    raise errors.DataError(f"{path}: no line with two or more tokens to score")
  return ids


def left_padded(ids: Sequence[Sequence[int]], length: int, pad_id: int
                ) -> tuple[np.ndarray, np.ndarray]:
  """(ids BxT, pads B): each sequence right-aligned after pad_id pads."""
  out = np.full((len(ids), length), pad_id, np.int32)
  pads = np.zeros(len(ids), np.int32)
  for row, seq in enumerate(ids):
    pads[row] = length - len(seq)
    out[row, pads[row]:] = seq
  return out, pads


def perplexity(params: Any, setup: families.Setup, ids: Sequence[Sequence[int]],
               batch_size: int = 16) -> dict[str, float]:
  """{"nats_per_token", "perplexity", "tokens", "lines"} of token sequences, computed in
  float32 whatever the run's compute dtype."""
  model = type(setup.model)(dataclasses.replace(setup.model.config, dtype=jnp.float32))
  nll_fn = jax.jit(functools.partial(setup.family.can("text_nll"), model=model))
  pad_id = 0
  total, count = 0.0, 0
  order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # Similar lengths together.
  for start in range(0, len(order), batch_size):
    rows = [ids[i] for i in order[start:start + batch_size]]
    rows += [rows[-1]] * (batch_size - len(rows))  # Fixed batch shape; copies not scored.
    real = min(len(order) - start, batch_size)
    length = -(-max(len(r) for r in rows) // BUCKET) * BUCKET
    tokens, pads = left_padded(rows, length, pad_id)
    nll, scored = jax.device_get(nll_fn(params, jnp.asarray(tokens), jnp.asarray(pads)))
    total += float(np.sum(nll[:real], dtype=np.float64))
    count += int(np.sum(scored[:real]))
  nats = total / count
  return {"nats_per_token": nats, "perplexity": math.exp(nats), "tokens": count,
          "lines": len(ids)}


def _text_spec(model: Any, tok: Any, report: dict):
  """A language model over plain text of its whole context."""
  del report
  return DataSpec(text_vocab_size=tok.vocab_size, text_pad_id=tok.pad_id,
                  text_seq_len=max(int(model.get("max_positions", 0)), 1))


def load(workdir: str):
  """(setup, params, text tokenizer) of a run directory or an import's INIT."""
  if init_from.is_import(workdir):
    return inference.load_import(workdir, _text_spec)
  config, setup, params = restore.restore_params(workdir)
  meta = records.read_metadata(config.data.dir)
  tok = text.load_recorded(config.data.dir, meta)
  return setup, params, tok


def evaluator(settings: ml_collections.ConfigDict, context: registry.Context):
  """config.evals.NAME (type "text_ppl"; text: the file, "" = off; max_lines: 0 = all) for
  training: state -> {"perplexity", "nats_per_token"} of the sampled parameters (the EMA
  where the run keeps one) with the records' text tokenizer."""
  if not settings.get("text"):
    return None
  setup, config = context.setup, context.config
  meta = records.read_metadata(config.data.dir)
  tok = text.load_recorded(config.data.dir, meta)
  context = setup.family.can("text_context")(setup.model_config)
  ids = read_lines(settings.text, tok, context, int(settings.get("max_lines", 0)))

  def run(state) -> dict[str, float]:
    out = perplexity(registry.sampled_params(state), setup, ids,
                     int(settings.get("batch_size", 16)))
    return {"perplexity": out["perplexity"], "nats_per_token": out["nats_per_token"]}

  return run


def main(argv: Optional[list[str]] = None) -> int:
  parser = command.parser("text-ppl", __doc__)
  parser.add_argument("--workdir", required=True,
                      help="Run directory, or the INIT directory of `upgen import hf`.")
  parser.add_argument("--text", required=True, help="Plain-text file, one sequence per line.")
  parser.add_argument("--max-lines", type=errors.whole(0), default=0, help="Score the first N lines (0: all).")
  parser.add_argument("--batch-size", type=errors.whole(1), default=16)
  args = parser.parse_args(argv)
  setup, params, tok = load(args.workdir)
  context = setup.family.can("text_context")(setup.model_config)
  ids = read_lines(args.text, tok, context, args.max_lines)
  result = perplexity(params, setup, ids, args.batch_size)
  command.emit({"workdir": args.workdir, "text": args.text, "context": context, **result})
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
