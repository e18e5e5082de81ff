"""`config.evals.NAME` of type "samples": the quality of samples while a model trains.

  c.evals.samples = ml_collections.ConfigDict(dict(
      type="samples", num=64, scorer="/runs/clip", inception="", shapes_fidelity=False))

Every config.train.eval_every steps and at the end, the trainer's evaluators run on the
parameters it samples with (the EMA where the run keeps one). This one draws a sample for
each of the first `num` validation captions (`config.data.val_split`, the same captions at
every evaluation, the same seed) with the family's `sample_images` and its `config.sample`
settings, and reports, each where its setting asks for it:

- `clip_score`: 100 x max(cos, 0) between each sample and its caption under the CLIP
  scorer run `scorer` (inference.Scorer), averaged; and `fid_scorer`: FID between the samples
  and the same examples' real images in that scorer's image features;
- `fid_inception`: FID in pytorch-fid's Inception-v3 features (`inception`: the weights
  file of scripts/convert_inception.py);
- `shapes_fidelity`: the captioned-shapes checker's caption fidelity (data made by
  `upgen data shapes` or the quickstart).

All three off (the default entry in configs/common.py) means no evaluator. Logged as
NAME/clip_score etc. in metrics.jsonl and TensorBoard. FID over `num` samples is biased
upwards for small `num`: compare runs at equal `num`, not with the papers' 30k-sample figures.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from upgen import errors
from upgen import families
from upgen import inference
from upgen.data import records
from upgen.evaluators import fid
from upgen.evaluators import inception
from upgen.evaluators import registry
from upgen.evaluators import shapes as shapes_eval
from upgen.tokenizers import image as image_tok
from upgen.tokenizers import text


def _first_examples(config: Any, setup: families.Setup, num: int) -> dict[str, np.ndarray]:
  """The first `num` examples of the validation split with both an image and a caption."""
  keep: dict[str, list] = {}
  count = 0
  reads = setup.family.reads
  for batch in reads.eval_iterator(config, setup.spec, config.data.val_split, None):
    batch = {k: np.asarray(v) for k, v in batch.items()}
    ok = np.asarray(batch.get("has_image", True), bool) & np.asarray(batch.get("has_text", True),
                                                                      bool)
    ok = np.broadcast_to(ok, (len(next(iter(batch.values()))),))
    for k, v in batch.items():
      keep.setdefault(k, []).append(v[ok])
    count += int(ok.sum())
    if count >= num:
      break
  if not count:
    raise errors.DataError(f"config.evals samples: {config.data.dir} has no image-caption "
                           f"pairs in split {config.data.val_split!r}")
  return {k: np.concatenate(v)[:num] for k, v in keep.items()}


def evaluator(settings: ml_collections.ConfigDict, context: registry.Context
              ) -> Optional[Callable[[Any], dict[str, float]]]:
  """state -> {clip_score, fid_scorer, fid_inception, shapes_fidelity} (those asked for) of
  samples from the sampled parameters (the EMA where the run keeps one)."""
  setup, config = context.setup, context.config
  scorer_run = settings.get("scorer", "")
  inception_weights = settings.get("inception", "")
  shapes = bool(settings.get("shapes_fidelity", False))
  if not (scorer_run or inception_weights or shapes):
    return None
  family = setup.family
  if family.sample_images is None or family.reads.captions(setup.dummy_batch(1)) is None:
    raise errors.ConfigError(f"config.evals samples: family {family.name!r} does not sample "
                             "images from captions")
  num = int(settings.get("num", 64))
  if num < 2:
    raise errors.ConfigError(f"config.evals samples: num={num}, FID needs at least 2 samples")
  batch = _first_examples(config, setup, num)
  pixels = image_tok.pixels_fn(config.data)
  real = np.asarray(pixels(np.asarray(family.reads.reference(batch))))
  captions = family.reads.captions(batch)
  meta = records.read_metadata(config.data.dir)
  tok = text.load_recorded(config.data.dir, meta)
  caption_text = [tok.decode(ids[np.asarray(mask, bool)])
                  for ids, mask in zip(np.asarray(captions[0]), np.asarray(captions[1]))]
  scorer = inference.load_scorer(scorer_run) if scorer_run else None
  real_scorer = scorer.image_features(real) if scorer else None
  inception_features = None
  if inception_weights:
    inception_features = inception.feature_fn(inception_weights)
    real_inception = inception_features(real)
  sample = jax.jit(setup.bind("sample_images"))
  seed = int(config.seed) + 3

  def run(state) -> dict[str, float]:
    ids = sample(registry.sampled_params(state), *captions, jax.random.key(seed))
    # Every process holds every sample (the ids may be sharded over several hosts).
    fake = np.asarray(pixels(np.asarray(multihost_utils.process_allgather(ids, tiled=True))))
    out = {}
    if scorer is not None:
      fake_features = scorer.image_features(fake)
      cosine = np.sum(fake_features * scorer.text_features(caption_text), axis=1)
      out["clip_score"] = float(np.mean(inference.clip_score(cosine)))
      out["fid_scorer"] = fid.fid_from_features(real_scorer, fake_features)
    if inception_features is not None:
      out["fid_inception"] = fid.fid_from_features(real_inception, inception_features(fake))
    if shapes:
      out["shapes_fidelity"] = shapes_eval.caption_fidelity(list(fake), caption_text)
    return out

  return run
