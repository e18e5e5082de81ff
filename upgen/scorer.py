"""A trained CLIP run as a scorer of image-caption pairs, and `upgen eval clip-score`.

  upgen eval clip-score --scorer RUN --manifest SAMPLES/manifest.jsonl [--out FILE]

Scores every sample of a manifest (`upgen sample`'s: prompt + image) by the scorer:
CLIP score = 100 x max(cosine(image features, caption features), 0) (torchmetrics' and
clean-fid's convention). Prints one JSON line with the mean, the number scored, and the
scorer's own image->text / text->image top-1 retrieval accuracy on its validation pairs
(`--retrieval N` of them, in record order: how far its scores can be trusted); writes the
per-sample scores to --out (default: clip_scores.jsonl beside the manifest). Images are
resized and center-cropped to the scorer's size when they differ; captions are tokenized
with the scorer's text tokenizer (the one its records were written with) and cut at its
caption length, as in training.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from upgen import errors


class Scorer:
  """(image, caption) -> cosine similarity under a trained CLIP run."""

  def __init__(self, workdir: str):
    from upgen.data import records
    from upgen.tokenizers import text
    from upgen.train import checkpoint
    from upgen.train import init_from
    self.workdir = workdir
    if init_from.is_import(workdir):  # A pretrained CLIP as imported, with its tokenizer.
      self.config = None
      self.setup, self.params, self.tokenizer = init_from.load_import(workdir, _import_spec)
    else:
      self.config, self.setup, self.params = checkpoint.restore_params(workdir)
      meta = records.read_metadata(self.config.data.dir)
      self.tokenizer = text.load(records.tokenizer_path(self.config.data.dir, meta,
                                                        "text_tokenizer"))
    if self.setup.family.name != "clip":
      raise errors.ConfigError(f"--scorer {workdir}: a model of family "
                               f"{self.setup.family.name!r}; a scorer is a clip run "
                               "(configs/clip.py) or a CLIP import")
    self.image_size = self.setup.spec.image_size
    model = self.setup.model  # Scores are computed in float32 whatever the run trained in.
    model = type(model)(dataclasses.replace(model.config, dtype=jnp.float32))
    self._image = jax.jit(lambda p, x: model.apply({"params": p}, x,
                                                   method=type(model).encode_image))
    self._text = jax.jit(lambda p, t, m: model.apply({"params": p}, t, m,
                                                     method=type(model).encode_text))

  def _batched(self, fn, arrays: Sequence[np.ndarray], batch_size: int) -> np.ndarray:
    """fn over fixed-size batches (upgen.sample.run_batched; fn takes no rng)."""
    from upgen import sample
    return sample.run_batched(lambda p, *xs: fn(p, *xs[:-1]), self.params, arrays, batch_size,
                              seed=0)

  def image_features(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """uint8 N x S x S x 3 (resized first if another size) -> unit vectors N x D."""
    images = np.asarray(images, np.uint8)
    if images.shape[1:3] != (self.image_size, self.image_size):
      from PIL import Image
      from upgen.data import sources
      images = np.stack([sources.resize_and_crop(Image.fromarray(x), self.image_size)
                         for x in images])
    return _unit(self._batched(self._image, [images], batch_size))

  def text_features(self, captions: Sequence[str], batch_size: int = 64) -> np.ndarray:
    ids, mask = self.tokenizer.pad_batch(self.tokenizer.encode_batch(list(captions)),
                                         self.setup.spec.text_seq_len)
    return _unit(self._batched(self._text, [ids, mask], batch_size))

  def cosine(self, images: np.ndarray, captions: Sequence[str], batch_size: int = 64
             ) -> np.ndarray:
    """Cosine of each image with its caption, N."""
    return np.sum(self.image_features(images, batch_size) *
                  self.text_features(captions, batch_size), axis=1)

  def retrieval(self, num: int = 256, split: str = "val") -> dict[str, float]:
    """In-batch top-1 retrieval over the first `num` pairs of the scorer's `split`."""
    if self.config is None:
      raise errors.ConfigError(f"--scorer {self.workdir} is an import, with no records of "
                               "its own to measure retrieval on (--retrieval 0)")
    config = self.config.copy_and_resolve_references()
    config.data.batch_size = 1
    images, texts, masks = [], [], []
    for batch in self.setup.family.reads.eval_iterator(config, self.setup.spec, split, None):
      if batch["has_image"][0] and batch["has_text"][0]:
        images.append(batch["pixels"][0])
        texts.append(batch["text_tokens"][0])
        masks.append(batch["text_mask"][0])
      if len(images) >= num:
        break
    if not images:
      raise errors.DataError(f"{self.config.data.dir}: no pairs in split {split!r}")
    image_f = _unit(self._batched(self._image, [np.stack(images)], 64))
    text_f = _unit(self._batched(self._text, [np.stack(texts), np.stack(masks)], 64))
    sim = image_f @ text_f.T
    labels = np.arange(len(sim))
    return {"pairs": len(sim),
            "image_to_text_top1": float(np.mean(np.argmax(sim, 1) == labels)),
            "text_to_image_top1": float(np.mean(np.argmax(sim, 0) == labels))}


def _import_spec(model: Any, tok: Any, report: dict):
  """An imported CLIP's sizes: captions of its context less [BOS] and [EOS], images of the
  size it was trained at (import.json "data")."""
  from upgen.data.spec import DataSpec
  framed = (tok.bos_id is not None) + (tok.eos_id is not None)
  return DataSpec(text_vocab_size=tok.vocab_size, text_pad_id=tok.pad_id,
                  text_bos_id=-1 if tok.bos_id is None else tok.bos_id,
                  text_eos_id=-1 if tok.eos_id is None else tok.eos_id,
                  text_seq_len=int(model.max_positions) - framed,
                  image_size=int(report["data"]["image_size"]))


def _unit(x: np.ndarray) -> np.ndarray:
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-6)


def clip_score(cosine: np.ndarray) -> np.ndarray:
  return 100.0 * np.maximum(cosine, 0.0)


@functools.lru_cache(maxsize=4)
def load(workdir: str) -> Scorer:
  return Scorer(workdir)


def score_manifest(scorer: Scorer, manifest: str) -> list[dict[str, Any]]:
  """Every manifest line with its "clip_score" added."""
  from upgen.data import sources
  rows = sources.read_captions(manifest, caption_key="prompt")
  if not rows:
    raise errors.DataError(f"{manifest}: no samples")
  images = np.stack([sources.load_image(r["image"], scorer.image_size) for r in rows])
  scores = clip_score(scorer.cosine(images, [r["caption"] for r in rows]))
  return [{**r["record"], "clip_score": float(s)} for r, s in zip(rows, scores)]


def main(argv: Optional[list[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog="upgen eval clip-score", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--scorer", required=True, help="A clip run directory.")
  parser.add_argument("--manifest", required=True, help="manifest.jsonl of `upgen sample`.")
  parser.add_argument("--out", help="Per-sample scores (default: beside the manifest).")
  parser.add_argument("--retrieval", type=int, default=256,
                      help="Validation pairs for the scorer's retrieval accuracy (0: skip).")
  args = parser.parse_args(argv)
  scorer = load(args.scorer)
  rows = score_manifest(scorer, args.manifest)
  out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.manifest)),
                                 "clip_scores.jsonl")
  with open(out, "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
  result = {"manifest": args.manifest, "scorer": args.scorer, "num": len(rows),
            "clip_score": float(np.mean([r["clip_score"] for r in rows])), "scores": out}
  if args.retrieval:
    result["scorer_retrieval"] = scorer.retrieval(args.retrieval)
  print(json.dumps(result))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
