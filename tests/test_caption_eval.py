"""`upgen eval captions` scoring: exact match after normalization, per-attribute accuracy by
the shapes grammar, unparseable captions wrong on every attribute."""
import pytest

from upgen.evaluators import captions as caption_eval


def test_exact_match_and_attributes():
  refs = ["a small red circle on the left", "a blue square above a green triangle",
          "a large cyan triangle at the top", "a red circle to the left of a red square"]
  gen = ["A small red  circle on the left.",  # Same after case / space / period.
         "a blue square above a green circle",  # One shape wrong.
         "a",  # What the length search used to write: unparseable.
         "a small red circle on the left"]  # One object where two are stated.
  s = caption_eval.score(refs, gen)
  assert s["num"] == 4 and s["exact_match"] == 0.25
  acc = s["attribute_accuracy"]
  assert acc["count"] == 0.5  # Rows 0 and 1 state the right number of objects.
  assert acc["color"] == 0.5 and acc["shape"] == 0.25
  assert acc["size"] == 0.5 and acc["position"] == 0.5  # One-object references: rows 0, 2.
  assert acc["relation"] == 0.5  # Two-object references: rows 1, 3.
  assert s["distinct"] == 4 and s["mean_words"] == pytest.approx((7 + 7 + 1 + 7) / 4)


def test_attributes_only_for_shapes_references():
  assert caption_eval.attribute_verdicts("a dog on a beach", "a dog on a beach") is None
  s = caption_eval.score(["a dog on a beach", "two cats"], ["a dog on a beach", "cats"])
  assert s["exact_match"] == 0.5 and s["attribute_accuracy"] == {}
  with pytest.raises(ValueError, match="2 references, 1 generated"):
    caption_eval.score(["a", "b"], ["a"])
