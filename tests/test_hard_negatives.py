"""Hard negatives (#36): the captions one attribute away, and a scorer's accuracy on them."""
import logging

import numpy as np
import pytest

from upgen.evaluators import hard_negatives
from upgen.evaluators import shapes


def test_one_object_negatives_differ_in_exactly_their_attribute():
  caption = "a small red circle on the left"
  negs = hard_negatives.shapes_negatives(caption)
  assert sorted(negs) == ["color", "count", "position", "shape", "size"]
  assert negs["shape"] == ["a small red square on the left", "a small red triangle on the left"]
  assert negs["size"] == ["a large red circle on the left"]
  assert len(negs["color"]) == 5 and len(negs["position"]) == 4
  (own,) = shapes.parse_caption(caption)
  for attribute in ("shape", "color", "size", "position"):
    for neg in negs[attribute]:
      (other,) = shapes.parse_caption(neg)  # Every negative is a caption of the grammar ...
      assert [k for k in own if own[k] != other[k]] == [attribute]  # ... one attribute away.
  for neg in negs["count"]:
    assert len(shapes.parse_caption(neg)) == 2 and "red circle" in neg


def test_two_object_negatives():
  caption = "a red circle to the left of a blue square"
  negs = hard_negatives.shapes_negatives(caption)
  assert sorted(negs) == ["color", "count", "position", "shape"]
  assert negs["position"] == ["a blue square to the left of a red circle",
                              "a red circle above a blue square"]
  assert "a red triangle to the left of a blue square" in negs["shape"]
  assert "a red circle to the left of a blue circle" in negs["shape"]
  assert len(negs["shape"]) == 4 and len(negs["color"]) == 10
  assert negs["count"] == ["a small red circle on the left", "a large red circle on the left",
                           "a small blue square on the right", "a large blue square on the right"]
  # Never two identical objects (the grammar has none): red circle / red circle is left out.
  negs = hard_negatives.shapes_negatives("a red circle above a red square")
  assert negs["shape"] == ["a red triangle above a red square",
                           "a red circle above a red triangle"]


def test_other_captions_get_their_nearest():
  captions = ["a cat on a mat", "a dog on a mat", "a cat on a hat", "the sky", "a cat on a mat"]
  assert hard_negatives.shapes_negatives(captions[0]) is None
  negs = hard_negatives.negatives(captions)
  assert negs[0] == {"nearest": ["a dog on a mat", "a cat on a hat", "the sky"]}
  assert hard_negatives.nearest_negatives(captions[0], captions, k=1) == ["a dog on a mat"]


def _features(captions, blind_to=()):
  """Text features of a scorer that sees every word in its place (word bigrams) but those
  in `blind_to`."""
  def bigrams(c):
    words = ["?" if w in blind_to else w for w in c.split()]
    return list(zip(words, words[1:]))
  vocab = sorted({b for c in captions for b in bigrams(c)})
  out = np.zeros((len(captions), len(vocab)))
  for i, c in enumerate(captions):
    for b in bigrams(c):
      out[i, vocab.index(b)] += 1.0
  return out / np.linalg.norm(out, axis=1, keepdims=True)


def test_accuracy_sees_what_the_scorer_sees():
  captions = ["a small red circle on the left", "a large blue square at the top",
              "a green triangle above a red circle"]
  texts = sorted({c for n in hard_negatives.negatives(captions) for cs in n.values()
                  for c in cs} | set(captions))
  seeing = {"color": 1.0, "count": 1.0, "position": 1.0, "shape": 1.0, "size": 1.0}
  # Blind to shapes, it cannot tell the two objects swapped either (the colours' bigrams
  # are the same): 2 of the 3 images right on position.
  shape_blind = {**seeing, "shape": 0.0, "position": 2 / 3}
  for blind, want, wrong in (((), seeing, []),
                             (("circle", "square", "triangle"), shape_blind, ["shape"])):
    table = dict(zip(texts, _features(texts, blind)))
    text_features = lambda cs, table=table: np.stack([table[c] for c in cs])
    result = hard_negatives.accuracy(text_features(captions), text_features, captions)
    assert {a: r["accuracy"] for a, r in result.items()} == pytest.approx(want)
    assert result["shape"]["num"] == 3 and result["size"]["num"] == 2
    # Chance: one image with 2 shape negatives, another with 2, the pair with 4.
    assert result["shape"]["chance"] == pytest.approx((1 / 3 + 1 / 3 + 1 / 5) / 3)
    assert hard_negatives.blind_to(result, captions) == wrong
    assert hard_negatives.blind_to(result, ["a cat"]) == []  # Prompts that name no shape.


def test_warn_if_blind_names_the_attributes(monkeypatch, caplog):
  result = {"shape": {"accuracy": 0.40, "chance": 0.33, "num": 64},
            "color": {"accuracy": 0.95, "chance": 0.17, "num": 64}}
  monkeypatch.setattr(hard_negatives, "of_scorer", lambda scorer, num: result)

  class Scorer:
    config, workdir = object(), "/runs/clip"
  with caplog.at_level(logging.WARNING):
    hard_negatives.warn_if_blind(Scorer(), ["a small red circle on the left"])
  (record,) = caplog.records
  assert record.getMessage() == (
      "the scorer /runs/clip is near chance against hard negatives for shape 0.40 (chance "
      "0.33): best of N may pick worse samples by these attributes (upgen eval clip-score "
      "shows every attribute)")
