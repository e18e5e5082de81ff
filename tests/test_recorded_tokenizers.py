"""Records and the tokenizers they were written with (#30): a tokenizer replaced at its path
is refused where a run loads it (sampling, the demo, evaluators, export), naming both
fingerprints; metadata.json whose sizes disagree with the tokenizer that wrote the records,
or whose token ids reach outside them, is refused when the records are opened."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from tests import token_data
from upgen import inference
from upgen.data import records
from upgen.tokenizers import text

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _upgen(*args):
  return subprocess.run([sys.executable, "-m", "upgen.cli", *map(str, args)], cwd=ROOT,
                        capture_output=True, text=True)


def _edit_json(path, edit):
  with open(path) as f:
    obj = json.load(f)
  edit(obj)
  with open(path, "w") as f:
    json.dump(obj, f)


def test_a_replaced_tokenizer_is_refused_at_sampling(tmp_path, tiny_quickstart):
  w, _ = tiny_quickstart
  # A copy of the quickstart's run, records and text tokenizer that points at itself.
  for name in ("model", "data", "text_tokenizer"):
    shutil.copytree(w / name, tmp_path / name,
                    ignore=shutil.ignore_patterns("*.tfrecord", "tensorboard"))
  data, tok_dir = tmp_path / "data", tmp_path / "text_tokenizer"
  for name in os.listdir(w / "data"):
    if name.endswith(".tfrecord"):
      os.symlink(w / "data" / name, data / name)
  _edit_json(tmp_path / "model" / "config.json", lambda c: c["data"].update(dir=str(data)))
  _edit_json(data / records.METADATA_FILE,
             lambda m: m["text_tokenizer"].update(path=str(tok_dir)))
  prompts = tmp_path / "prompts.txt"
  prompts.write_text("a red circle\n")
  sample = ("sample", "--workdir", tmp_path / "model", "--prompts", prompts, "--per-prompt", 1)
  out = _upgen(*sample, "--out", tmp_path / "ok")
  assert out.returncode == 0, out.stderr  # The copy samples as the original does.

  # Another BPE written over the one the records were made with: same path, other ids.
  original = text.load(str(tok_dir)).identity()  # Hashes the files now, before they change.
  text.train_bpe(["some other captions entirely", "of other words"], 64, str(tok_dir))
  assert text.load(str(tok_dir)).vocab_size != original["vocab_size"]
  out = _upgen(*sample, "--out", tmp_path / "replaced")
  assert out.returncode == 2 and len(out.stderr.splitlines()) == 1, out.stderr
  line = out.stderr.strip()
  assert line.startswith(f"upgen sample: error: {tok_dir}: the text tokenizer here (sha256 ")
  assert f"is not the one the records in {data} were written with" in line
  assert f"(sha256 {original['sha256'][:12]}, {original['vocab_size']} ids, " in line
  assert "differs in sha256, vocab_size" in line
  assert not os.path.exists(tmp_path / "replaced" / "manifest.jsonl")

  # The image tokenizer likewise (a VQGAN whose weights are not the records' ones).
  shutil.rmtree(tok_dir)
  shutil.copytree(w / "text_tokenizer", tok_dir)
  _edit_json(data / records.METADATA_FILE,
             lambda m: m["image_tokenizer"]["identity"].update(sha256="0" * 64))
  out = _upgen(*sample, "--out", tmp_path / "image")
  assert out.returncode == 2 and len(out.stderr.splitlines()) == 1, out.stderr
  assert "the image tokenizer here" in out.stderr and "differs in sha256" in out.stderr
  assert "sha256 000000000000" in out.stderr


def test_records_checked_against_their_tokenizers_when_opened(tmp_path):
  data = token_data.write(str(tmp_path / "data"), num_train=8, num_val=4)
  path = os.path.join(data, records.METADATA_FILE)
  with open(path) as f:
    meta = json.load(f)
  # The writer recorded each split's id range; the tokenizers' sizes hold it.
  train = meta["splits"]["train"]["id_range"]
  assert 5 <= train["text_tokens"][0] and train["text_tokens"][1] < token_data.TEXT_VOCAB
  assert 0 <= train["image_tokens"][0] and train["image_tokens"][1] < token_data.IMAGE_VOCAB
  records.read_metadata(data)

  def refused(edit, match):
    with open(path, "w") as f:
      json.dump(edit(json.loads(json.dumps(meta))), f)
    with pytest.raises(records.MetadataError, match=match):
      records.read_metadata(data)

  def vocab(m, size, said):
    m["text_tokenizer"].update(vocab_size=size, identity={"vocab_size": said})
    return m
  # A vocabulary edited larger than the tokenizer's would build a larger model.
  refused(lambda m: vocab(m, 600, token_data.TEXT_VOCAB),
          r"key 'text_tokenizer\.vocab_size' is 600 but the tokenizer the records were "
          r"written with has 24 \(text_tokenizer\.identity\.vocab_size\)")

  def codebook(m):
    m["image_tokenizer"]["identity"] = {"config": {"codebook_size": 32}}
    return m
  refused(codebook, r"'image_tokenizer\.codebook_size' is 16 but .* has 32")
  # Records whose ids reach outside the vocabulary: found at open, not at the bad record.
  refused(lambda m: vocab(m, 12, 12),
          r"'splits\.train\.id_range\.text_tokens' \[\d+, 23\] reaches outside "
          r"text_tokenizer's \[0, 12\)")

  def pad(m):
    m["text_tokenizer"]["eos_id"] = token_data.TEXT_VOCAB
    return m
  refused(pad, r"'text_tokenizer\.eos_id' is 24, outside the vocabulary \[0, 24\)")


def test_load_recorded_accepts_the_same_tokenizer_anywhere(tmp_path):
  tok = text.train_bpe(["a red circle", "a blue square"], 80, str(tmp_path / "a"))
  data = str(tmp_path / "data")
  info = records.write_split(data, "train", [{"text_tokens": [5, 6], "id": "0"}], 1)
  records.update_metadata(data, "train", info, records.text_tokenizer_info(tok), None)
  assert text.load_recorded(data).identity() == tok.identity()
  # Moved (the path is not part of the identity), the same files still pass.
  shutil.copytree(tmp_path / "a", tmp_path / "b")
  _edit_json(os.path.join(data, records.METADATA_FILE),
             lambda m: m["text_tokenizer"].update(path=str(tmp_path / "b")))
  assert text.load_recorded(data).vocab_size == tok.vocab_size
  text.train_bpe(["a red circle", "a blue square"], 80, str(tmp_path / "b"))  # Same again.
  assert text.load_recorded(data).identity() == tok.identity()
  text.train_bpe(["a red circle", "a green square"], 80, str(tmp_path / "b"))
  with pytest.raises(records.MetadataError, match=r"differs in sha256"):
    text.load_recorded(data)


def test_a_long_prompt_is_quoted_by_its_ends():
  prompt = "a red circle " + "word " * 2000 + "zzz"
  quoted = inference.quoted(prompt)
  assert quoted == ("'a red circle word word word word word wo' ... 'd word word word word "
                    "word word word zzz' (10,016 characters)")
  assert inference.quoted("a red circle") == "'a red circle'"
