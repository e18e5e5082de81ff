"""`upgen eval clip-score`: samples scored by a trained CLIP run (`inference.Scorer`).

  upgen eval clip-score --scorer RUN --manifest SAMPLES/manifest.jsonl [--out FILE]

Scores every sample of a manifest (`upgen sample`'s: prompt + image) by the scorer:
CLIP score = 100 x max(cosine(image features, caption features), 0) (torchmetrics' and
clean-fid's convention). Prints one JSON line with the mean, the number scored, and the
scorer's own image->text / text->image top-1 retrieval accuracy on its validation pairs
(`--retrieval N` of them, in record order: how far its scores can be trusted) and its
accuracy against hard negatives, per attribute (hard_negatives.py); writes the
per-sample scores to --out (default: clip_scores.jsonl beside the manifest). Images are
resized and center-cropped to the scorer's size when they differ; captions are tokenized
with the scorer's text tokenizer (the one its records were written with) and cut at its
caption length, as in training.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any, Optional

import numpy as np

from upgen import errors
from upgen import inference
from upgen.data import sources
from upgen.evaluators import command
from upgen.evaluators import hard_negatives


def score_manifest(scorer: inference.Scorer, manifest: str) -> list[dict[str, Any]]:
  """Every manifest line with its "clip_score" added."""
  rows = sources.read_captions(manifest, caption_key="prompt")
  if not rows:
    raise errors.DataError(f"{manifest}: no samples")
  images = np.stack([sources.load_image(r["image"], scorer.image_size) for r in rows])
  scores = inference.clip_score(scorer.cosine(images, [r["caption"] for r in rows]))
  return [{**r["record"], "clip_score": float(s)} for r, s in zip(rows, scores)]


def main(argv: Optional[list[str]] = None) -> int:
  parser = command.parser("clip-score", __doc__)
  parser.add_argument("--scorer", required=True, help="A clip run directory.")
  parser.add_argument("--manifest", required=True, help="manifest.jsonl of `upgen sample`.")
  parser.add_argument("--out", help="Per-sample scores (default: beside the manifest).")
  parser.add_argument("--retrieval", type=errors.whole(0), default=256,
                      help="Validation pairs for the scorer's retrieval accuracy (0: skip).")
  args = parser.parse_args(argv)
  scorer = inference.load_scorer(args.scorer)
  rows = score_manifest(scorer, args.manifest)
  out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.manifest)),
                                 "clip_scores.jsonl")
  with open(out, "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
  result = {"manifest": args.manifest, "scorer": args.scorer, "num": len(rows),
            "clip_score": float(np.mean([r["clip_score"] for r in rows])), "scores": out}
  if args.retrieval:
    result["scorer_retrieval"] = scorer.retrieval(args.retrieval)
    result["scorer_hard_negatives"] = hard_negatives.of_scorer(scorer, args.retrieval)
  command.emit(result)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
