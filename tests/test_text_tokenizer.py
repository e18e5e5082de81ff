"""Text tokenizer: caption BPE training, round trips, special ids, save/load, HF directories."""
import json
import os

import numpy as np
import pytest
import tokenizers
from tokenizers import models, pre_tokenizers

from upgen.tokenizers import text

COLORS = ("red", "green", "blue", "yellow", "magenta", "cyan")
SHAPES = ("circle", "square", "triangle")
PLACES = ("on the left", "on the right", "at the top", "at the bottom", "in the center")


def shapes_captions(n: int, seed: int = 0) -> list[str]:
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    if rng.random() < 0.5:
      size = ("small", "large")[rng.integers(2)]
      out.append(f"a {size} {COLORS[rng.integers(6)]} {SHAPES[rng.integers(3)]} "
                 f"{PLACES[rng.integers(5)]}")
    else:
      relation = ("to the left of", "above")[rng.integers(2)]
      out.append(f"a {COLORS[rng.integers(6)]} {SHAPES[rng.integers(3)]} {relation} "
                 f"a {COLORS[rng.integers(6)]} {SHAPES[rng.integers(3)]}")
  return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("bpe"))
  return text.train_bpe(shapes_captions(300), vocab_size=128, out_dir=out), out


def test_special_ids_and_vocab(trained):
  tok, out = trained
  assert os.path.isfile(os.path.join(out, "tokenizer.json"))
  assert (tok.pad_id, tok.mask_id, tok.bos_id, tok.eos_id) == (0, 1, 3, 4)
  assert len(text.SPECIAL_TOKENS) + len(text.BASE_ALPHABET) < tok.vocab_size <= 128
  ids = tok.encode_batch(shapes_captions(50, seed=1))
  assert all(0 < len(seq) for seq in ids)
  assert all(text.SPECIAL_TOKENS.index("[EOS]") < i < tok.vocab_size for seq in ids for i in seq)


def test_round_trip_normalizes_case_and_spaces(trained):
  tok, _ = trained
  for caption in shapes_captions(40, seed=2):
    assert tok.decode(tok.encode(caption)) == caption
  assert tok.decode(tok.encode("  A Red   CIRCLE, on the left. ")) == "a red circle, on the left."
  # Common words of the corpus become single tokens: BPE merges happened.
  assert len(tok.encode("a red circle on the left")) <= 8


def test_decode_skips_pad_and_mask_and_unknown_maps_to_unk(trained):
  tok, _ = trained
  ids = tok.encode("a blue square")
  assert tok.decode([tok.mask_id] + ids + [tok.pad_id] * 3) == "a blue square"
  assert 2 in tok.encode("a blue square ☃")  # [UNK]


def test_pad_batch(trained):
  tok, _ = trained
  ids_BxL, mask_BxL = tok.pad_batch([[5, 6, 7], [8], list(range(5, 15))], length=4)
  assert ids_BxL.dtype == np.int32 and mask_BxL.dtype == bool
  np.testing.assert_array_equal(ids_BxL, [[5, 6, 7, 0], [8, 0, 0, 0], [5, 6, 7, 8]])
  np.testing.assert_array_equal(mask_BxL.sum(1), [3, 1, 4])


def test_save_load_identity(trained, tmp_path):
  tok, out = trained
  loaded = text.load(out)
  assert loaded.identity() == tok.identity()
  assert text.load(os.path.join(out, "tokenizer.json")).identity()["sha256"] == tok.identity()["sha256"]
  caps = shapes_captions(10, seed=3)
  assert loaded.encode_batch(caps) == tok.encode_batch(caps)
  other = text.train_bpe(shapes_captions(300, seed=9)[:30], vocab_size=70, out_dir=str(tmp_path))
  assert other.identity()["sha256"] != tok.identity()["sha256"]


def test_load_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="neither"):
    text.load(str(tmp_path))
  with pytest.raises(FileNotFoundError, match="no such"):
    text.load(str(tmp_path / "missing"))


def _word_level(vocab: list[str]) -> tokenizers.Tokenizer:
  tok = tokenizers.Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  return tok


def test_hugging_face_directory(tmp_path):
  from transformers import PreTrainedTokenizerFast
  vocab = ["<pad>", "<unk>", "<mask>", "<s>", "</s>", "a", "red", "circle", "blue"]
  hf = PreTrainedTokenizerFast(tokenizer_object=_word_level(vocab), pad_token="<pad>",
                               unk_token="<unk>", mask_token="<mask>", bos_token="<s>",
                               eos_token="</s>")
  hf.save_pretrained(str(tmp_path))
  tok = text.load(str(tmp_path))
  assert tok.identity()["kind"] == "hf"
  assert (tok.pad_id, tok.mask_id, tok.bos_id, tok.eos_id, tok.vocab_size) == (0, 2, 3, 4, 9)
  assert tok.encode_batch(["a red circle", "blue"]) == [[5, 6, 7], [8]]
  assert tok.decode([0, 5, 8, 2, 0]) == "a blue"


def test_hugging_face_without_mask_falls_back_or_fails(tmp_path):
  from transformers import PreTrainedTokenizerFast
  with_unk = tmp_path / "with_unk"
  PreTrainedTokenizerFast(tokenizer_object=_word_level(["<unk>", "</s>", "a"]), unk_token="<unk>",
                          eos_token="</s>").save_pretrained(str(with_unk))
  tok = text.load(str(with_unk))
  assert (tok.pad_id, tok.mask_id) == (1, 0)  # pad <- eos, mask <- unk
  only_eos = tmp_path / "only_eos"
  PreTrainedTokenizerFast(tokenizer_object=_word_level(["</s>", "a"]),
                          eos_token="</s>").save_pretrained(str(only_eos))
  tok = text.load(str(only_eos))  # GPT-2's case: no [MASK] (the decoder-only family needs none).
  assert (tok.pad_id, tok.mask_id) == (0, -1)
  assert tok.decode(tok.encode("a")) == "a"
  # A family that masks text tokens refuses such records by name.
  from tests import token_data
  from upgen import families
  from upgen.data.spec import DataSpec
  spec = DataSpec(text_vocab_size=tok.vocab_size, text_pad_id=tok.pad_id,
                  text_mask_id=tok.mask_id, text_seq_len=4, image_vocab_size=8,
                  image_grid=(2, 2))
  with pytest.raises(ValueError, match="text_mask_id=-1.*UPGen needs .*\\[MASK\\]"):
    families.build(token_data.small_config("upgen"), spec)


def test_main_reads_split_folder(tmp_path):
  split = tmp_path / "data" / "train"
  split.mkdir(parents=True)
  with open(split / "captions.jsonl", "w") as f:
    for caption in shapes_captions(200):
      f.write(json.dumps({"image": "images/x.png", "caption": caption}) + "\n")
  out = tmp_path / "tok"
  assert text.main(["--captions", str(tmp_path / "data"), "--vocab-size", "90",
                    "--out", str(out)]) == 0
  assert text.load(str(out)).vocab_size <= 90
  (tmp_path / "bad.jsonl").write_text('{"caption": "a red circle"}\n{"text": "x"}\n')
  with pytest.raises(ValueError, match="bad.jsonl:2"):
    text.main(["--captions", str(tmp_path / "bad.jsonl"), "--vocab-size", "60",
               "--out", str(out)])
