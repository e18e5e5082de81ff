"""grain input pipelines: sharding, shuffling, mixture, resume, metadata checks, image folders."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from configs import upgen as upgen_config
from configs import vqgan as vqgan_config
from upgen.data import pipeline
from upgen.data import readers
from upgen.data import records
from upgen.data import sources
from upgen.data.spec import DataSpec

V_IMAGE, V_TEXT, PAD, MASK = 64, 50, 0, 1
TEXT_INFO = {"identity": {"name": "chars"}, "vocab_size": V_TEXT, "pad_id": PAD, "mask_id": MASK,
             "bos_id": 2, "eos_id": 3, "path": "/tok/text"}
IMAGE_INFO = {"identity": {"name": "patches"}, "codebook_size": V_IMAGE, "grid": [2, 2],
              "image_size": 8, "path": "/tok/image"}


def _record(i, kind="paired", bad_image_id=None):
  """Record i: image tokens [i % 64, i // 64, 7, 9] identify it; text length 1 + i % 9."""
  image = np.array([i % 64, i // 64, 7, 9]) if kind != "text" else None
  if image is not None and bad_image_id is not None:
    image[2] = bad_image_id
  text = 4 + (np.arange(1 + i % 9) + i) % (V_TEXT - 4) if kind != "image" else None
  return {"image_tokens": image, "text_tokens": text, "caption": f"c{i}", "id": f"{kind}{i}"}


def _make_dir(path, n, kind="paired", num_shards=3, split="train", **kw):
  examples = (_record(i, kind, **kw) for i in range(n))
  info = records.write_split(str(path), split, examples, num_shards)
  records.update_metadata(str(path), split, info, TEXT_INFO if kind != "image" else None,
                          IMAGE_INFO if kind != "text" else None)
  return str(path)


def _config(data_dir, batch_size=8, **data):
  c = upgen_config.get_config("tiny")
  c.data.dir = data_dir
  c.data.batch_size = batch_size
  c.data.text_dropout = 0.0
  c.data.text_seq_len = 6
  for k, v in data.items():
    c.data[k] = v
  return c


def _train(c, **kw):
  return pipeline.make_train_iterator(c, pipeline.token_spec(c.data), **kw)


def _eval(c, split, **kw):
  return pipeline.make_eval_iterator(c, pipeline.token_spec(c.data), split, **kw)


def _images(c, split, **kw):
  return pipeline.make_image_iterator(c, readers.IMAGE_FOLDER.spec(c.data), split, **kw)


def _ids(batch):
  """Record index of each example (from its image tokens)."""
  return (batch["image_tokens"][:, 0] + 64 * batch["image_tokens"][:, 1]).tolist()


def _take(it, n):
  return [next(it) for _ in range(n)]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return _make_dir(tmp_path_factory.mktemp("paired"), 40)


def test_token_spec_is_read_from_the_metadata(tmp_path, data_dir):
  c = _config(data_dir)
  assert pipeline.token_spec(c.data) == DataSpec(
      text_vocab_size=V_TEXT, text_pad_id=PAD, text_mask_id=MASK, text_bos_id=2, text_eos_id=3,
      text_seq_len=6,
      image_vocab_size=V_IMAGE, image_grid=(2, 2), image_size=8)
  c.data.text_seq_len = 0
  with pytest.raises(ValueError, match="config.data.text_seq_len=0"):
    pipeline.token_spec(c.data)
  # An extra source must carry the same tokenizers as data.dir.
  other = _make_dir(tmp_path / "other", 8, num_shards=1)
  meta_path = os.path.join(other, "metadata.json")
  meta = json.load(open(meta_path))
  meta["image_tokenizer"]["identity"] = {"name": "other patches"}
  json.dump(meta, open(meta_path, "w"))
  with pytest.raises(ValueError, match=r"extra_sources: .*other was tokenized with a different "
                                       r"image_tokenizer"):
    pipeline.token_spec(_config(data_dir, extra_sources=f"paired:1:{other}").data)


def test_batches_follow_the_contract(data_dir):
  batch = next(_train(_config(data_dir)))
  assert batch["image_tokens"].shape == (8, 4) and batch["image_tokens"].dtype == np.int32
  assert batch["text_tokens"].shape == (8, 6) and batch["text_tokens"].dtype == np.int32
  assert batch["text_mask"].dtype == bool and batch["has_image"].all() and batch["has_text"].all()
  for i, text, mask in zip(_ids(batch), batch["text_tokens"], batch["text_mask"]):
    want = _record(i)["text_tokens"][:6]
    assert mask.sum() == len(want) and text[:len(want)].tolist() == want.tolist()
    assert (text[len(want):] == PAD).all()


def test_epochs_are_permutations_and_differ(data_dir):
  it = _train(_config(data_dir))
  epoch1 = sum((_ids(b) for b in _take(it, 5)), [])
  epoch2 = sum((_ids(b) for b in _take(it, 5)), [])
  assert sorted(epoch1) == list(range(40)) and sorted(epoch2) == list(range(40))
  assert epoch1 != epoch2 and epoch1 != list(range(40))
  other_seed = _config(data_dir)
  other_seed.seed = 1
  assert _ids(next(_train(other_seed))) != epoch1[:8]


def test_processes_are_disjoint_and_cover_the_global_batch(data_dir):
  global_batches = _take(_train(_config(data_dir)), 7)
  per_process = [_take(_train(_config(data_dir), rows=rows), 7)
                 for rows in (range(0, 4), range(4, 8))]
  for step, g in enumerate(global_batches):
    a, b = _ids(per_process[0][step]), _ids(per_process[1][step])
    assert len(a) == len(b) == 4 and not set(a) & set(b)
    assert a + b == _ids(g)  # Each process's rows, where a one-process run has them.
  # Over the first epoch (5 batches of 8 of 40 records): every record once, in one process.
  epoch = [sum((_ids(batch) for batch in batches[:5]), []) for batches in per_process]
  assert not set(epoch[0]) & set(epoch[1])
  assert sorted(epoch[0] + epoch[1]) == list(range(40))
  scattered = _train(_config(data_dir), rows=[0, 1, 6, 7])
  for g in global_batches[:3]:
    assert _ids(next(scattered)) == [_ids(g)[r] for r in (0, 1, 6, 7)]
  for bad in ([8], [3, 2], [1, 1], []):
    with pytest.raises(ValueError, match=r"config\.data\.batch_size=8"):
      _train(_config(data_dir), rows=bad)


def test_get_state_set_state_resumes_exactly(data_dir):
  c = _config(data_dir, text_dropout=0.3)
  it = _train(c)
  _take(it, 3)
  state = json.loads(json.dumps(it.get_state()))
  expected = _take(it, 6)  # Crosses the epoch boundary (5 batches per epoch).
  restored = _train(c)
  restored.set_state(state)
  for want, got in zip(expected, _take(restored, 6)):
    for key in want:
      np.testing.assert_array_equal(want[key], got[key])


def test_mixture_and_dropout_proportions(tmp_path, data_dir):
  text_dir = _make_dir(tmp_path / "text", 30, kind="text", num_shards=1)
  image_dir = _make_dir(tmp_path / "image", 20, kind="image", num_shards=2)
  c = _config(data_dir, batch_size=40, paired_weight=2.0, text_dropout=0.25,
              extra_sources=f"text:1:{text_dir},image:1.0:{image_dir}")
  batches = _take(_train(c), 30)
  has_image = np.concatenate([b["has_image"] for b in batches])
  has_text = np.concatenate([b["has_text"] for b in batches])
  n = len(has_image)
  text_only = (~has_image).mean()
  paired = (has_image & has_text).sum() / n
  image_only = (has_image & ~has_text).mean()
  assert abs(text_only - 0.25) < 0.02  # 1/4 of the mixture, never dropped.
  # Paired source = 1/2 of the mixture, 25% of it shown image-only; image source = 1/4.
  assert abs(paired - 0.5 * 0.75) < 0.04 and abs(image_only - (0.25 + 0.5 * 0.25)) < 0.04
  text_only_rows = np.concatenate([b["image_tokens"][~b["has_image"]] for b in batches])
  assert (text_only_rows == 0).all()
  with pytest.raises(ValueError, match=r"config\.data\.extra_sources.*'paired'"):
    _train(_config(data_dir, extra_sources=f"paired:1:{text_dir}"))


def test_out_of_vocab_id_is_an_error(tmp_path):
  bad_dir = _make_dir(tmp_path, 16, num_shards=1, bad_image_id=64)
  # Found when the records are opened, from the id range written beside them ...
  want = (r"metadata\.json: key 'splits\.train\.id_range\.image_tokens' \[0, 64\] reaches "
          r"outside image_tokenizer's \[0, 64\)")
  with pytest.raises(ValueError, match=want):
    next(_train(_config(bad_dir)))
  # ... and, in records written before the range was recorded, as the record is read.
  path = os.path.join(bad_dir, records.METADATA_FILE)
  with open(path) as f:
    meta = json.load(f)
  del meta["splits"]["train"]["id_range"]
  with open(path, "w") as f:
    json.dump(meta, f)
  want = r"train-00000-of-00001\.tfrecord: record \d+: image_tokens id 64"
  with pytest.raises(ValueError, match=want):
    next(_train(_config(bad_dir)))


def test_an_empty_train_split_is_named(tmp_path):
  data = _make_dir(tmp_path / "data", 8, num_shards=1)
  open(os.path.join(data, "train-00000-of-00001.tfrecord"), "wb").close()  # No records.
  path = os.path.join(data, records.METADATA_FILE)
  with open(path) as f:
    meta = json.load(f)
  meta["splits"]["train"].update(records_per_shard=[0], sha256=["-"])
  with open(path, "w") as f:
    json.dump(meta, f)
  with pytest.raises(ValueError, match=(
      rf"^{path}: split 'train' has no records \(records_per_shard \[0\]\): nothing to "
      "train on")):
    next(_train(_config(data)))


def test_eval_iterator_is_one_deterministic_pass(data_dir):
  c = _config(data_dir, batch_size=12)
  batches = list(_eval(c, "train"))
  assert len(batches) == 3  # 40 // 12, remainder dropped.
  ids = sum((_ids(b) for b in batches), [])
  assert sorted(ids) == sorted(set(ids)) and len(ids) == 36
  assert ids == sum((_ids(b) for b in _eval(c, "train")), [])
  halves = [list(_eval(c, "train", rows=rows))
            for rows in (range(0, 6), range(6, 12))]
  assert [_ids(a) + _ids(b) for a, b in zip(*halves)] == [_ids(b) for b in batches]


def _image_folder(root, sizes):
  os.makedirs(root / "images", exist_ok=True)
  lines = []
  for i, (w, h) in enumerate(sizes):
    pixels = np.zeros((h, w, 3), np.uint8)
    pixels[:, : w // 2] = (255, 0, 0)
    pixels[:, w // 2:] = (0, 0, 255)
    pixels[0, :] = (0, 255, 0)
    Image.fromarray(pixels).save(root / "images" / f"{i}.png")
    lines.append(json.dumps({"image": f"images/{i}.png", "caption": f"img {i}", "extra": 1}))
  (root / "captions.jsonl").write_text("\n".join(lines) + "\n")
  return str(root)


def test_image_folder_resizes_crops_and_reports_bad_lines(tmp_path):
  folder = _image_folder(tmp_path / "f", [(40, 20), (13, 31), (16, 16)])
  src = sources.ImageFolderSource(folder, 16)
  wide = src[0]
  assert wide["image"].shape == (16, 16, 3) and wide["image"].dtype == np.uint8
  assert wide["caption"] == "img 0" and wide["id"] == "images/0.png"
  # 40x20 -> 32x16, center crop keeps columns 8..24: left half red, right half blue.
  assert tuple(wide["image"][8, 2]) == (255, 0, 0) and tuple(wide["image"][8, 13]) == (0, 0, 255)
  tall = src[1]["image"]  # 13x31 -> 16x38, crop rows 11..27: the green top row is cut away.
  assert tall.shape == (16, 16, 3) and tall[:, :, 1].max() < 40
  assert (src[2]["image"][0] == (0, 255, 0)).all()
  with open(os.path.join(folder, "captions.jsonl"), "a") as f:
    f.write('{"image": "images/0.png", "caption": 5}\n')
  with pytest.raises(ValueError, match=r"captions\.jsonl:4: 'caption' must be a string"):
    sources.ImageFolderSource(folder, 16)
  (tmp_path / "f" / "captions.jsonl").write_text('{"image": "images/9.png", "caption": "x"}\n')
  with pytest.raises(FileNotFoundError, match=r"captions\.jsonl:1: image file .*9\.png does not"):
    sources.ImageFolderSource(folder, 16)
  (tmp_path / "f" / "captions.jsonl").write_text('{"image": "images/0.png", "caption": "x"}\n{oops\n')
  with pytest.raises(ValueError, match=r"captions\.jsonl:2: not valid JSON"):
    sources.ImageFolderSource(folder, 16)


def test_image_iterator_shards_shuffles_and_resumes(tmp_path):
  _image_folder(tmp_path / "train", [(8 + i % 3, 8) for i in range(12)])
  c = vqgan_config.get_config("tiny")
  c.data.dir, c.data.batch_size, c.data.image_size = str(tmp_path), 4, 8
  it = _images(c, "train")
  first = next(it)["image"]
  assert first.shape == (4, 8, 8, 3) and first.dtype == np.uint8
  state = json.loads(json.dumps(it.get_state()))
  expected = _take(it, 4)
  restored = _images(c, "train")
  restored.set_state(state)
  for want, got in zip(expected, _take(restored, 4)):
    np.testing.assert_array_equal(want["image"], got["image"])
  parts = [next(_images(c, "train", rows=rows))["image"]
           for rows in ([0, 1], [2, 3])]
  np.testing.assert_array_equal(np.concatenate(parts), first)
  assert len(list(_images(c, "train", train=False))) == 3


def test_records_per_second(data_dir):
  assert pipeline.records_per_second(data_dir, "train", batch_size=8, seconds=0.2) > 0


def test_worker_processes_give_the_same_batches_and_resume(data_dir):
  c = _config(data_dir, text_dropout=0.3)
  expected = _take(_train(c), 6)
  c.data.num_workers = 1
  it = _train(c)
  got = _take(it, 2)
  state = json.loads(json.dumps(it.get_state()))
  got += _take(it, 4)
  it.close()
  restored = _train(c)
  restored.set_state(state)
  got_restored = _take(restored, 4)
  restored.close()
  for want, a in zip(expected, got):
    assert _ids(want) == _ids(a) and (want["has_text"] == a["has_text"]).all()
  assert [_ids(b) for b in got_restored] == [_ids(b) for b in expected[2:]]
