"""What a CLIP scorer sees: its caption against the captions one attribute away (#36).

For each validation image, the scorer should rank its own caption above every caption that
differs from it in one attribute. On shapes captions the attributes are the grammar's:

  shape     the same caption with another shape (for two objects: either object's)
  color     another colour (either object's)
  size      the other size (one object)
  position  another position (one object); the objects swapped, or the other relation (two)
  count     one object where there are two, two where there is one

On any other captions, "nearest": the 8 other captions of the set that share the most words
with it. Accuracy per attribute is the fraction of images whose own caption scores above
all of that attribute's negatives; "chance" is what a scorer blind to the attribute gets
(1 / (1 + negatives), averaged). A scorer near chance on an attribute cannot rerank
samples by it: best-of-N then picks by everything else (`warn_if_blind`).

  upgen eval clip-score ... prints it as "scorer_hard_negatives";
  config.evals.hard_negatives (configs/clip.py) logs hard_negatives/ATTR during training.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Optional, Sequence

import ml_collections
import numpy as np

from upgen import errors
from upgen import inference
from upgen.datasets import shapes as shapes_data
from upgen.evaluators import registry
from upgen.evaluators import shapes

log = logging.getLogger("upgen.evaluators")
NEAREST = 8  # Negatives per caption outside the shapes grammar.
# Below this share of the way from chance to perfect, a scorer is blind to an attribute.
BLIND = 0.25
_SIDES = {"left of": ("left", "right"), "above": ("top", "bottom")}


def _one(o: dict, **change) -> str:
  o = {**o, **change}
  return shapes_data.one_object_caption(o["size"], o["color"], o["shape"], o["position"])


def _two(first: dict, relation: str, second: dict) -> str:
  return shapes_data.two_object_caption(first["color"], first["shape"], relation,
                                        second["color"], second["shape"])


def shapes_negatives(caption: str) -> Optional[dict[str, list[str]]]:
  """{attribute: captions one attribute away} of a shapes caption; None for any other."""
  try:
    objects = shapes.parse_caption(caption)
  except errors.DataError:
    return None
  if len(objects) == 1:
    (o,) = objects
    return {
        "shape": [_one(o, shape=s) for s in shapes_data.SHAPES if s != o["shape"]],
        "color": [_one(o, color=c) for c in shapes_data.COLORS if c != o["color"]],
        "size": [_one(o, size=s) for s in shapes_data.SIZES if s != o["size"]],
        "position": [_one(o, position=p) for p in shapes_data.POSITIONS if p != o["position"]],
        "count": [_two(o, relation, {**o, "shape": s}) for relation in shapes_data.RELATIONS
                  for s in shapes_data.SHAPES if s != o["shape"]],
    }
  first, second = objects
  relation = first["relation"]
  pair = [first, second]

  def changed(key: str, values) -> list[str]:
    out = []
    for i in range(2):
      for v in values:
        objs = [dict(o) for o in pair]
        objs[i][key] = v
        if v != pair[i][key] and (objs[0]["shape"], objs[0]["color"]) != (
            objs[1]["shape"], objs[1]["color"]):
          out.append(_two(objs[0], relation, objs[1]))
    return out

  sides = _SIDES[relation]
  return {
      "shape": changed("shape", shapes_data.SHAPES),
      "color": changed("color", shapes_data.COLORS),
      "position": [_two(second, relation, first)] + [
          _two(first, r, second) for r in shapes_data.RELATIONS if r != relation],
      "count": [_one({**o, "size": size, "position": side}) for o, side in zip(pair, sides)
                for size in shapes_data.SIZES],
  }


def nearest_negatives(caption: str, others: Sequence[str], k: int = NEAREST) -> list[str]:
  """The k other distinct captions sharing the most words with `caption` (ties: in order)."""
  words = set(caption.split())
  pool = [c for c in dict.fromkeys(others) if c != caption]
  overlap = [len(words & set(c.split())) / max(len(words | set(c.split())), 1) for c in pool]
  order = np.argsort(-np.asarray(overlap, float), kind="stable")[:k]
  return [pool[i] for i in order]


def negatives(captions: Sequence[str]) -> list[dict[str, list[str]]]:
  """Each caption's negatives by attribute (the shapes grammar's, else "nearest")."""
  out = []
  for caption in captions:
    found = shapes_negatives(caption)
    out.append(found if found is not None else
               {"nearest": nearest_negatives(caption, captions)})
  return out


def accuracy(image_features_NxD: np.ndarray, text_features: Callable[[list[str]], np.ndarray],
             captions: Sequence[str]) -> dict[str, dict[str, float]]:
  """{attribute: {"accuracy", "chance", "num"}} of unit image features against their
  captions' negatives, with `text_features` mapping captions to unit vectors."""
  per_caption = negatives(captions)
  texts = list(dict.fromkeys(list(captions) + [c for n in per_caption for cs in n.values()
                                                for c in cs]))
  index = {t: i for i, t in enumerate(texts)}
  text_f = text_features(texts)
  out: dict[str, dict[str, float]] = {}
  for attribute in sorted({a for n in per_caption for a in n}):
    right, chance = [], []
    for i, (caption, negs) in enumerate(zip(captions, per_caption)):
      if not negs.get(attribute):
        continue
      scores = text_f[[index[caption]] + [index[c] for c in negs[attribute]]] @ \
          image_features_NxD[i]
      right.append(scores[0] > scores[1:].max())
      chance.append(1.0 / len(scores))
    if right:
      out[attribute] = {"accuracy": float(np.mean(right)), "chance": float(np.mean(chance)),
                        "num": len(right)}
  return out


def of_scorer(scorer: inference.Scorer, num: int = 256, split: str = "val"
              ) -> dict[str, dict[str, float]]:
  """`accuracy` of a scorer on the first `num` pairs of its own `split`."""
  images, captions = scorer.validation_pairs(num, split)
  return accuracy(scorer.image_features(images), scorer.text_features, captions)


def blind_to(result: dict[str, dict[str, float]], prompts: Sequence[str]) -> list[str]:
  """The attributes the prompts name on which the scorer is near chance (`BLIND`)."""
  named = {a for n in negatives(list(prompts)) for a in n}
  return [a for a, r in sorted(result.items()) if a in named and
          r["accuracy"] < r["chance"] + BLIND * (1.0 - r["chance"])]


def warn_if_blind(scorer: inference.Scorer, prompts: Sequence[str], num: int = 128) -> None:
  """One warning line when reranking `prompts` by `scorer` would pick by attributes it
  cannot see (an import, with no validation data of its own, is not checked)."""
  if scorer.config is None:
    return
  result = of_scorer(scorer, num)
  blind = blind_to(result, prompts)
  if blind:
    said = ", ".join(f"{a} {result[a]['accuracy']:.2f} (chance {result[a]['chance']:.2f})"
                     for a in blind)
    log.warning("the scorer %s is near chance against hard negatives for %s: best of N "
                "may pick worse samples by these attributes (upgen eval clip-score shows "
                "every attribute)", scorer.workdir, said)


def evaluator(settings: ml_collections.ConfigDict, context: registry.Context):
  """config.evals.NAME (type "hard_negatives"; num: validation pairs, 0 = off) for a clip
  run: state -> {ATTR: accuracy} (the sampled parameters)."""
  num = int(settings.get("num", 128))
  if not num or context.setup.family.name != "clip":
    return None
  scorer = inference.Scorer.of(context.setup, None, context.config)
  images, captions = [], []

  def run(state: Any) -> dict[str, float]:
    scorer.params = registry.sampled_params(state)
    if not captions:  # Read once, at the first evaluation.
      found = scorer.validation_pairs(num, context.config.data.val_split)
      images.append(found[0])
      captions.extend(found[1])
    result = accuracy(scorer.image_features(images[0]), scorer.text_features, captions)
    return {a: r["accuracy"] for a, r in result.items()}

  return run
