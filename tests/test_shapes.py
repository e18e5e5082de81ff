"""Tests for the captioned shapes data set (datasets/shapes.py) and its evaluator (evaluators/shapes.py)."""
import collections
import json
import os

import numpy as np
import pytest

from upgen.data import sources
from upgen.datasets import shapes
from upgen.evaluators import shapes as shapes_eval


def _read_split(root, split):
  with open(os.path.join(root, split, "captions.jsonl")) as f:
    records = [json.loads(line) for line in f]
  images = [sources.load_image(os.path.join(root, split, r["image"])) for r in records]
  return records, images


@pytest.fixture(scope="module")
def data32(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("shapes32"))
  summary = shapes.generate(root, image_size=32, num_train=240, num_val=60, num_test=60, seed=3)
  return root, summary


@pytest.fixture(scope="module")
def data64(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("shapes64"))
  shapes.generate(root, image_size=64, num_train=100, num_val=30, num_test=40, seed=5)
  return root


def _dir_bytes(root):
  out = {}
  for split in shapes.SPLITS:
    for dirpath, _, files in os.walk(os.path.join(root, split)):
      for name in files:
        path = os.path.join(dirpath, name)
        with open(path, "rb") as f:
          out[os.path.relpath(path, root)] = f.read()
  return out


def test_generation_is_deterministic_per_seed(tmp_path):
  kwargs = dict(image_size=32, num_train=20, num_val=6, num_test=6)
  for name, seed in (("a", 0), ("b", 0), ("c", 1)):
    shapes.generate(str(tmp_path / name), seed=seed, **kwargs)
  a, b, c = (_dir_bytes(str(tmp_path / name)) for name in "abc")
  assert len(a) == 3 + 32  # Three captions.jsonl files and 32 images.
  assert a == b
  assert a.keys() == c.keys()
  assert a["train/captions.jsonl"] != c["train/captions.jsonl"]
  assert sum(a[k] != c[k] for k in a if k.endswith(".png")) > 20


def test_layout_and_object_records(data32):
  root, summary = data32
  with open(os.path.join(root, "shapes.json")) as f:
    assert json.load(f) == summary
  assert summary["args"] == {"image_size": 32, "num_train": 240, "num_val": 60, "num_test": 60,
                             "seed": 3}
  records, images = _read_split(root, "val")
  assert len(records) == 60 and records[0]["image"] == "images/000000.png"
  for record, image in zip(records, images):
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    stated = shapes_eval.parse_caption(record["caption"])
    assert [(o["color"], o["shape"]) for o in record["objects"]] == [
        (o["color"], o["shape"]) for o in stated]
    # Only palette colors and black: no anti-aliasing.
    palette = {(0, 0, 0), *shapes.COLORS.values()}
    assert {tuple(p) for p in image.reshape(-1, 3)} <= palette


def test_distributions_cover_every_value(data32):
  root, _ = data32
  records, _ = _read_split(root, "train")
  counts = collections.defaultdict(collections.Counter)
  for record in records:
    stated = shapes_eval.parse_caption(record["caption"])
    counts["num_objects"][len(stated)] += 1
    for obj in stated:
      for key in ("color", "shape", "size", "position", "relation"):
        if key in obj:
          counts[key][obj[key]] += 1
  assert set(counts["color"]) == set(shapes.COLORS)
  assert set(counts["shape"]) == set(shapes.SHAPES)
  assert set(counts["size"]) == set(shapes.SIZES)
  assert set(counts["position"]) == set(shapes.POSITIONS)
  assert set(counts["relation"]) == set(shapes.RELATIONS)
  assert 0.35 < counts["num_objects"][1] / len(records) < 0.65


def test_jitter_stays_in_range_and_on_canvas(data32):
  root, _ = data32
  records, _ = _read_split(root, "train")
  for record in records:
    stated = shapes_eval.parse_caption(record["caption"])
    for obj in record["objects"]:
      nominal = shapes.SIZES[stated[0]["size"]] if len(stated) == 1 else shapes.PAIR_SIZE
      assert abs(obj["size"] / nominal - 1) <= shapes.SIZE_JITTER + 1e-3
      half = obj["size"] / 2
      assert half - 1e-3 <= obj["x"] <= 1 - half + 1e-3
      assert half - 1e-3 <= obj["y"] <= 1 - half + 1e-3
    # Probe labels: the single-object attributes the caption states, nothing on pairs.
    if len(stated) == 1:
      assert record["labels"] == {k: stated[0][k] for k in ("shape", "color", "size",
                                                             "position")}
    else:
      assert "labels" not in record
    if len(stated) == 1:
      ax, ay = shapes.POSITIONS[stated[0]["position"]]
      obj = record["objects"][0]
      assert abs(obj["x"] - ax) < 0.07 and abs(obj["y"] - ay) < 0.07


def test_held_out_captions_only_in_test(data32):
  root, summary = data32
  held = set(summary["held_out_captions"])
  all_two = [shapes.two_object_caption(*spec) for spec in shapes.two_object_specs()]
  assert len(all_two) == len(set(all_two)) == summary["num_two_object_captions"] == 612
  assert held <= set(all_two) and len(held) == round(0.2 * 612)
  for split in ("train", "val"):
    records, _ = _read_split(root, split)
    assert not held & {r["caption"] for r in records}
  test_records, _ = _read_split(root, "test")
  assert all(len(r["objects"]) == 2 and r["caption"] in held for r in test_records)
  other_seed = {shapes.two_object_caption(*s) for s in shapes.held_out_specs(4)}
  assert other_seed != held


@pytest.mark.parametrize("split", shapes.SPLITS)
def test_fidelity_on_rendered_images(data32, data64, split):
  for root in (data32[0], data64):
    records, images = _read_split(root, split)
    fidelity = shapes_eval.caption_fidelity(images, [r["caption"] for r in records])
    assert fidelity >= 0.99, (root, split)


def _first(records, images, predicate):
  for record, image in zip(records, images):
    if predicate(record["caption"]):
      return record["caption"], image.copy()
  raise AssertionError("no matching example")


def test_corrupted_images_fail(data32):
  root, _ = data32
  records, images = _read_split(root, "train")
  caption, image = _first(records, images, lambda c: c.endswith("on the left"))
  assert shapes_eval.score(image, caption)[0]
  obj = np.any(image > 0, axis=-1)
  color = shapes.COLORS[shapes_eval.parse_caption(caption)[0]["color"]]
  other = next(c for c in shapes.COLORS.values() if c != color)

  recolored = image.copy()
  recolored[obj] = other
  ok, details = shapes_eval.score(recolored, caption)
  assert not ok and not details["color"] and details["shape"]

  moved = np.roll(image, 16, axis=1)
  ok, details = shapes_eval.score(moved, caption)
  assert not ok and not details["position"] and details["color"]

  ok, details = shapes_eval.score(np.zeros_like(image), caption)
  assert not ok and not details["count"] and details["found"] == []

  extra = image.copy()
  extra[26:31, 26:31] = other
  assert not shapes_eval.score(extra, caption)[0]

  speckled = image.copy()
  speckled[0, 31] = other  # A single stray pixel is noise, not an object.
  assert shapes_eval.score(speckled, caption)[0]

  caption, image = _first(records, images, lambda c: " to the left of " in c)
  assert shapes_eval.score(image, caption)[0]
  ok, details = shapes_eval.score(image[:, ::-1], caption)
  assert not ok and not details["relation"] and details["color"]
  erased = image.copy()
  erased[:, 16:] = 0
  ok, details = shapes_eval.score(erased, caption)
  assert not ok and not details["count"]


def test_size_and_shape_are_read_from_pixels():
  for image_size in (32, 64):
    for shape in shapes.SHAPES:
      for size_name, size in shapes.SIZES.items():
        mask = shapes.shape_mask(shape, 0.5, 0.5, size, image_size)
        image = shapes.render([{"color": "cyan"}], [mask])
        (found,) = shapes_eval.parse_image(image)
        assert (found["shape"], found["size"], found["position"]) == (shape, size_name, "center")
        assert abs(found["extent"] - size) < 0.04


def test_triangle_points_up():
  mask = shapes.shape_mask("triangle", 0.5, 0.5, 0.5, 64)
  widths = mask.sum(axis=1)[mask.any(axis=1)]
  assert widths[0] < widths[-1] / 4 and np.all(np.diff(widths) >= 0)


def test_label_components_connectivity():
  classes = -np.ones((6, 7), np.int64)
  classes[0, 0:5] = 0  # A U shape: labels must propagate around the bend.
  classes[0:4, 0] = 0
  classes[0:4, 4] = 0
  classes[4, 5] = 0  # Diagonal neighbour of (3, 4): same component.
  classes[3, 1:3] = 1  # Touches class 0 but is another color.
  classes[5, 0] = 0  # Not connected to anything.
  labels = shapes_eval.label_components(classes)
  assert np.all((labels >= 0) == (classes >= 0))
  assert len(np.unique(labels[classes == 0])) == 2
  assert labels[3, 0] == labels[4, 5] == labels[0, 0]
  assert labels[5, 0] != labels[0, 0]
  assert len(np.unique(labels[classes == 1])) == 1 and labels[3, 1] != labels[3, 0]


def test_parse_caption_round_trips_every_caption():
  for size in shapes.SIZES:
    for color in shapes.COLORS:
      for shape in shapes.SHAPES:
        for position in shapes.POSITIONS:
          caption = shapes.one_object_caption(size, color, shape, position)
          assert shapes_eval.parse_caption(caption) == [
              {"shape": shape, "color": color, "size": size, "position": position}]
  for color1, shape1, relation, color2, shape2 in shapes.two_object_specs():
    caption = shapes.two_object_caption(color1, shape1, relation, color2, shape2)
    assert shapes_eval.parse_caption(caption) == [
        {"shape": shape1, "color": color1, "relation": relation},
        {"shape": shape2, "color": color2}]
  assert shapes_eval.parse_caption(" A red  circle above a blue square. ")[0]["relation"] == "above"
  for bad in ("a purple circle on the left", "a red circle", "a red circle near a blue square",
              "a small red circle on the left and more"):
    with pytest.raises(ValueError, match="not a shapes caption"):
      shapes_eval.parse_caption(bad)


def test_generate_rejects_bad_arguments(tmp_path):
  with pytest.raises(ValueError, match="image_size"):
    shapes.generate(str(tmp_path), image_size=8, num_train=1, num_val=1, num_test=1)
  with pytest.raises(ValueError, match="num_val"):
    shapes.generate(str(tmp_path), num_train=1, num_val=-1, num_test=1)


def test_cli_writes_layout_and_evaluates(tmp_path, capsys):
  out = str(tmp_path / "data")
  assert shapes.main(["--out", out, "--num-train", "12", "--num-val", "4", "--num-test", "4",
                      "--seed", "2"]) == 0
  for split, num in (("train", 12), ("val", 4), ("test", 4)):
    with open(os.path.join(out, split, "captions.jsonl")) as f:
      assert len(f.readlines()) == num
    assert sorted(os.listdir(os.path.join(out, split, "images")))[-1] == f"{num - 1:06d}.png"
  with open(os.path.join(out, "shapes.json")) as f:
    assert json.load(f)["args"]["seed"] == 2
  capsys.readouterr()

  report = str(tmp_path / "eval" / "val.json")
  assert shapes_eval.main(["--dir", os.path.join(out, "val"), "--out", report]) == 0
  assert "caption fidelity: 1.000 (4/4)" in capsys.readouterr().out
  with open(report) as f:
    result = json.load(f)
  assert result["num"] == 4 and result["attribute_accuracy"]["color"] == 1.0

  # A samples manifest: one prompt does not match its image.
  with open(os.path.join(out, "test", "captions.jsonl")) as f:
    records = [json.loads(line) for line in f]
  manifest = tmp_path / "samples" / "manifest.jsonl"
  manifest.parent.mkdir()
  lines = []
  for i, record in enumerate(records):
    image = os.path.relpath(os.path.join(out, "test", record["image"]), manifest.parent)
    prompt = record["caption"] if i else "a large red square in the center"
    lines.append(json.dumps({"prompt": prompt, "image": image}))
  manifest.write_text("\n".join(lines) + "\n")
  assert shapes_eval.main(["--manifest", str(manifest)]) == 0
  assert "caption fidelity: 0.750 (3/4)" in capsys.readouterr().out

  manifest.write_text(json.dumps({"caption": "x", "image": "a.png"}) + "\n")
  with pytest.raises(ValueError, match="manifest.jsonl:1"):
    shapes_eval.main(["--manifest", str(manifest)])
