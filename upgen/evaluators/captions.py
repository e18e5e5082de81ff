"""`upgen eval captions --workdir W --data SPLIT_DIR [--num N]`: how well a run writes
captions for images (image->text).

SPLIT_DIR holds captions.jsonl and its images (e.g. W/shapes/val of a quickstart). Every
image gets one caption from the run's `caption_images` sampler; the result is the exact-match
accuracy against the reference caption (after the text tokenizer's normalization: case and
spaces), and, where the references are shapes captions, per-attribute accuracy: both
captions parsed with the shapes grammar and compared attribute by attribute (an
unparseable caption, or one with another number of objects, counts as wrong for each).
Prints one JSON line; `--out` also writes every (image, reference, generated) triple.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Optional, Sequence

import numpy as np

from upgen import errors
from upgen import inference
from upgen.data import sources
from upgen.evaluators import command
from upgen.evaluators import shapes as shapes_eval

# Attributes compared per stated object (one-object captions: the first four; two-object:
# colour and shape of each object plus the relation).
ONE_OBJECT = ("color", "shape", "size", "position")


def _normalize(text: str) -> str:
  return " ".join(text.lower().split()).rstrip(".")


def attribute_verdicts(reference: str, generated: str) -> Optional[dict[str, bool]]:
  """{attribute: generated states it as reference does}, or None when the reference is not
  a shapes caption. A generated caption the grammar rejects is wrong on every attribute."""
  try:
    want = shapes_eval.parse_caption(reference)
  except ValueError:
    return None
  keys = ONE_OBJECT if len(want) == 1 else ("color", "shape", "relation")
  try:
    got = shapes_eval.parse_caption(generated)
  except ValueError:
    got = []
  verdicts = {"count": len(got) == len(want)}
  for key in keys:
    verdicts[key] = len(got) == len(want) and all(
        w.get(key) == g.get(key) for w, g in zip(want, got))
  return verdicts


def score(references: Sequence[str], generated: Sequence[str]) -> dict:
  """Exact match and (shapes) per-attribute accuracy of generated captions."""
  if len(references) != len(generated) or not references:
    raise ValueError(f"{len(references)} references, {len(generated)} generated captions")
  exact = [_normalize(r) == _normalize(g) for r, g in zip(references, generated)]
  per_attribute: dict[str, list[bool]] = {}
  for r, g in zip(references, generated):
    verdicts = attribute_verdicts(r, g)
    for key, ok in (verdicts or {}).items():
      per_attribute.setdefault(key, []).append(ok)
  lengths = [len(g.split()) for g in generated]
  return {"num": len(exact), "exact_match": float(np.mean(exact)),
          "attribute_accuracy": {k: float(np.mean(v)) for k, v in sorted(per_attribute.items())},
          "mean_words": float(np.mean(lengths)), "distinct": len(set(generated))}


def evaluate_run(run, data_dir: str, num: int = 0, seed: int = 0,
                 batch_size: int = 64) -> tuple[dict, list[dict]]:
  """(scores, rows) of a loaded run (upgen.inference.Run) on the first `num` images of
  data_dir (0 = all)."""
  entries = sources.read_captions(data_dir)
  if num:
    entries = entries[:num]
  size = run.image_tokenizer.image_size
  images = np.stack([sources.load_image(e["image"], size) for e in entries])
  generated = inference.caption_images(run, images, seed=seed, batch_size=batch_size)
  references = [e["caption"] for e in entries]
  rows = [{"image": e["image"], "reference": r, "generated": g}
          for e, r, g in zip(entries, references, generated)]
  return {"data": data_dir, **score(references, generated)}, rows


def evaluate(workdir: str, data_dir: str, num: int = 0, seed: int = 0,
             batch_size: int = 64) -> tuple[dict, list[dict]]:
  """`evaluate_run` of the run in `workdir`."""
  scores, rows = evaluate_run(inference.load_run(workdir), data_dir, num, seed, batch_size)
  return {"workdir": workdir, **scores}, rows


def write(path: str, scores: dict, rows: list[dict]) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump({**scores, "captions": rows}, f, indent=1)


def main(argv: Optional[list[str]] = None) -> int:
  parser = command.parser("captions", __doc__)
  parser.add_argument("--workdir", required=True, help="Run directory of `upgen train`.")
  parser.add_argument("--data", required=True, help="Folder with captions.jsonl and images.")
  parser.add_argument("--num", type=errors.whole(0), default=0, help="First N images only (0 = all).")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--batch-size", type=errors.whole(1), default=64)
  parser.add_argument("--out", help="Also write scores and every caption to this JSON file.")
  args = parser.parse_args(argv)
  result, rows = evaluate(args.workdir, args.data, args.num, args.seed, args.batch_size)
  command.emit(result)
  if args.out:
    write(args.out, result, rows)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
