"""Text tokenizers: our BPE trained on captions, or any local Hugging Face tokenizer.

Our BPE (`train_bpe`) uses the HF `tokenizers` library: NFKC + lowercase + whitespace
collapsing, a Metaspace ("▁") pre-tokenizer with punctuation split off, and a Metaspace decoder,
so `decode(encode(s))` gives back the normalized text. Special tokens have fixed ids:
[PAD]=0, [MASK]=1, [UNK]=2, [BOS]=3, [EOS]=4. It is saved as `out_dir/tokenizer.json`.

`load(path)` opens our tokenizer.json (a file or a directory holding it, also in cloud
storage: gs://...) or a local Hugging Face tokenizer directory (one with
tokenizer_config.json, via transformers.AutoTokenizer, offline).

CLI: `upgen tokenizer text --captions DIR_OR_JSONL --vocab-size N --out DIR`.
"""
from __future__ import annotations

import abc
import hashlib
import os
import string
from typing import Any, Iterable, Optional, Sequence

import numpy as np
import tokenizers
from tokenizers import decoders
from tokenizers import models
from tokenizers import normalizers
from tokenizers import pre_tokenizers
from tokenizers import trainers

from upgen import errors
from upgen import paths
from upgen.data import sources
from upgen.tokenizers import recorded

SPECIAL_TOKENS = ("[PAD]", "[MASK]", "[UNK]", "[BOS]", "[EOS]")
# Characters always in the vocabulary (text is lowercased), so plain English prompts encode
# without [UNK] even when the captions never used a character.
BASE_ALPHABET = tuple(string.ascii_lowercase + string.digits + ".,;:!?'\"-()")
TOKENIZER_FILE = "tokenizer.json"
# The words of the captions a BPE was trained on, one per line, beside tokenizer.json: what
# a prompt may use and be understood (any other word still encodes, from smaller pieces).
WORDS_FILE = "caption_words.txt"
HF_CONFIG_FILE = "tokenizer_config.json"
# Files that define a Hugging Face tokenizer (hashed into its identity; weights are not).
HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                      "added_tokens.json", "vocab.json", "vocab.txt", "merges.txt",
                      "spiece.model", "sentencepiece.bpe.model", "tokenizer.model")


def _sha256_files(files: Sequence[str]) -> str:
  digest = hashlib.sha256()
  for path in files:
    digest.update(os.path.basename(path).encode() + b"\0")
    with paths.open(path, "rb") as f:
      digest.update(f.read())
  return digest.hexdigest()


class TextTokenizer(abc.ABC):
  """Common interface; subclasses supply `_encode_batch`, `_decode` and the special ids."""

  kind = ""

  def __init__(self, path: str, files: Sequence[str], vocab_size: int, pad_id: int,
               mask_id: int, bos_id: Optional[int], eos_id: Optional[int],
               unk_id: Optional[int] = None, words: Optional[frozenset[str]] = None):
    self._path = path
    self._files = tuple(files)
    self._vocab_size = int(vocab_size)
    self._pad_id, self._mask_id = int(pad_id), int(mask_id)
    self._bos_id, self._eos_id = bos_id, eos_id
    self.unk_id = unk_id  # The id unknown characters become (None: it has none).
    self.words = words  # Words of the training captions, when known (BPEs upgen trained).

  def unknown_words(self, text: str) -> list[str]:
    """Words of `text` outside the training captions' words (or that encode to unk_id)."""
    found = []
    for word in caption_words(text):
      if (self.words is not None and word not in self.words) or (
          self.unk_id is not None and self.unk_id in self.encode(word)):
        found.append(word)
    return found

  @property
  def vocab_size(self) -> int:
    return self._vocab_size

  @property
  def pad_id(self) -> int:
    return self._pad_id

  @property
  def mask_id(self) -> int:
    return self._mask_id

  @property
  def bos_id(self) -> Optional[int]:
    return self._bos_id

  @property
  def eos_id(self) -> Optional[int]:
    return self._eos_id

  @property
  def path(self) -> str:
    return self._path

  @property
  def files(self) -> tuple[str, ...]:
    """The files that define it (its identity is their hash)."""
    return self._files

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    """Token ids per text: no padding, no BOS/EOS."""
    return self._encode_batch(list(texts))

  def encode(self, text: str) -> list[int]:
    return self.encode_batch([text])[0]

  def decode(self, ids: Iterable[int]) -> str:
    """Text of the ids, skipping [PAD] and [MASK]."""
    kept = [int(i) for i in ids if int(i) not in (self._pad_id, self._mask_id)]
    return self._decode(kept)

  def pad_batch(self, ids: Sequence[Sequence[int]], length: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids_BxL int32 padded with [PAD] / truncated to `length`, mask_BxL bool of real tokens)."""
    ids_BxL = np.full((len(ids), length), self._pad_id, np.int32)
    mask_BxL = np.zeros((len(ids), length), bool)
    for row, seq in enumerate(ids):
      seq = list(seq)[:length]
      ids_BxL[row, :len(seq)] = seq
      mask_BxL[row, :len(seq)] = True
    return ids_BxL, mask_BxL

  def identity(self) -> dict[str, Any]:
    """What makes token ids comparable (the path is not part of it)."""
    return {"kind": self.kind, "sha256": _sha256_files(self._files),
            "vocab_size": self._vocab_size}

  @abc.abstractmethod
  def _encode_batch(self, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, without specials."""

  @abc.abstractmethod
  def _decode(self, ids: list[int]) -> str:
    """Text of ids that hold no [PAD] / [MASK]."""


class BpeTokenizer(TextTokenizer):
  """Our caption BPE (a `tokenizers.Tokenizer` with the fixed special ids)."""

  kind = "bpe"

  def __init__(self, tokenizer: tokenizers.Tokenizer, file: str):
    ids = {}
    for token, expected in zip(SPECIAL_TOKENS, range(len(SPECIAL_TOKENS))):
      ids[token] = tokenizer.token_to_id(token)
      if ids[token] != expected:
        raise errors.DataError(f"{file}: special token {token} has id {ids[token]}, expected "
                               f"{expected} (not a tokenizer written by upgen's train_bpe?)")
    directory = os.path.dirname(paths.absolute(file))
    words_file = paths.join(directory, WORDS_FILE)
    words = None
    if paths.exists(words_file):
      with paths.open(words_file) as f:
        words = frozenset(line.strip() for line in f if line.strip())
    super().__init__(directory, [file], tokenizer.get_vocab_size(with_added_tokens=True),
                     ids["[PAD]"], ids["[MASK]"], ids["[BOS]"], ids["[EOS]"],
                     unk_id=ids["[UNK]"], words=words)
    self._tokenizer = tokenizer

  def _encode_batch(self, texts: list[str]) -> list[list[int]]:
    return [e.ids for e in self._tokenizer.encode_batch(texts, add_special_tokens=False)]

  def _decode(self, ids: list[int]) -> str:
    return self._tokenizer.decode(ids, skip_special_tokens=False)


def _first_id(tok: Any, attrs: Sequence[str], avoid: Sequence[int] = ()) -> Optional[int]:
  for attr in attrs:
    value = getattr(tok, attr, None)
    if value is not None and value not in avoid:
      return int(value)
  return None


class HFTokenizer(TextTokenizer):
  """A local Hugging Face tokenizer directory (transformers.AutoTokenizer, offline).

  [PAD] falls back to the tokenizer's EOS / SEP token and [MASK] to its UNK token when they
  are missing. A tokenizer with no [MASK] and no UNK apart from its pad id (GPT-2's: one id
  is unk, bos, eos and pad) has mask_id -1: the families that mask text tokens refuse it by
  name, the decoder-only family needs none.
  """

  kind = "hf"

  def __init__(self, directory: str):
    from transformers import AutoTokenizer  # Heavy import, only for HF directories.
    try:
      tok = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    except (OSError, ValueError) as e:
      raise errors.DataError(f"{directory}: cannot load a Hugging Face tokenizer ({e})") from e
    pad_id = _first_id(tok, ("pad_token_id", "eos_token_id", "sep_token_id"))
    if pad_id is None:
      raise errors.DataError(f"{directory}: tokenizer has no pad, eos or sep token to use as [PAD]")
    mask_id = _first_id(tok, ("mask_token_id", "unk_token_id"), avoid=(pad_id,))
    if mask_id is None:
      mask_id = -1
    files = [os.path.join(directory, f) for f in HF_TOKENIZER_FILES
             if os.path.isfile(os.path.join(directory, f))]
    unk_id = _first_id(tok, ("unk_token_id",))
    super().__init__(os.path.abspath(directory), files, len(tok), pad_id, mask_id,
                     _first_id(tok, ("bos_token_id", "cls_token_id")),
                     _first_id(tok, ("eos_token_id", "sep_token_id")),
                     unk_id=unk_id if unk_id != mask_id else None)
    self._tok = tok

  def _encode_batch(self, texts: list[str]) -> list[list[int]]:
    if not texts:
      return []
    return [list(ids) for ids in self._tok(texts, add_special_tokens=False)["input_ids"]]

  def _decode(self, ids: list[int]) -> str:
    return self._tok.decode(ids, skip_special_tokens=False)


def _new_bpe() -> tokenizers.Tokenizer:
  tok = tokenizers.Tokenizer(models.BPE(unk_token="[UNK]"))
  tok.normalizer = normalizers.Sequence([
      normalizers.NFKC(), normalizers.Lowercase(),
      normalizers.Replace(tokenizers.Regex(r"\s+"), " "), normalizers.Strip()])
  tok.pre_tokenizer = pre_tokenizers.Sequence(
      [pre_tokenizers.Metaspace(), pre_tokenizers.Punctuation()])
  tok.decoder = decoders.Metaspace()
  return tok


def caption_words(text: str) -> list[str]:
  """A caption's words as the vocabulary checks count them: lowercased, split on spaces,
  outer punctuation stripped, empty ones dropped."""
  return [w for w in (t.strip(".,;:!?'\"()") for t in text.lower().split()) if w]


def train_bpe(texts: Iterable[str], vocab_size: int, out_dir: str) -> BpeTokenizer:
  """Trains the caption BPE and writes `out_dir/tokenizer.json` (and the captions' words,
  `out_dir/caption_words.txt`, for warnings about prompts that use others).

  The vocabulary holds the specials, BASE_ALPHABET, the text's other characters and merges;
  it may come out smaller than `vocab_size` when the text has fewer merges.
  """
  texts = list(texts)
  if vocab_size <= len(SPECIAL_TOKENS):
    raise errors.DataError(
        f"vocab_size={vocab_size} must exceed the {len(SPECIAL_TOKENS)} special tokens")
  tok = _new_bpe()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                initial_alphabet=list(BASE_ALPHABET), show_progress=False)
  tok.train_from_iterator(texts, trainer)
  if tok.get_vocab_size() <= len(SPECIAL_TOKENS):
    raise errors.DataError("train_bpe: no text to train on")
  os.makedirs(out_dir, exist_ok=True)
  words = {w for text in texts for w in caption_words(text)}
  # Each file whole or not at all (records name the tokenizer by its files' hash).
  paths.write_atomic(os.path.join(out_dir, WORDS_FILE), "".join(f"{w}\n" for w in sorted(words)))
  path = os.path.join(out_dir, TOKENIZER_FILE)
  paths.write_atomic(path, tok.to_str(pretty=True))
  return BpeTokenizer(tokenizers.Tokenizer.from_file(path), path)


def _load_remote_bpe(path: str) -> BpeTokenizer:
  """Our tokenizer.json in cloud storage (the file or its directory)."""
  file = path if paths.isfile(path) else paths.join(path, TOKENIZER_FILE)
  if not paths.isfile(file):
    raise errors.NotFound(f"{path}: no {TOKENIZER_FILE} (from cloud storage only upgen BPE "
                            "tokenizers load; copy a Hugging Face tokenizer to local disk)")
  with paths.open(file) as f:
    return BpeTokenizer(tokenizers.Tokenizer.from_str(f.read()), file)


def load(path: str) -> TextTokenizer:
  """Our tokenizer.json (file or its directory, local or remote), or a local Hugging Face
  tokenizer directory."""
  if paths.is_remote(path):
    return _load_remote_bpe(path)
  if os.path.isfile(path):
    return BpeTokenizer(tokenizers.Tokenizer.from_file(path), path)
  if not os.path.isdir(path):
    raise errors.NotFound(f"{path}: no such tokenizer file or directory")
  if os.path.isfile(os.path.join(path, HF_CONFIG_FILE)):
    return HFTokenizer(path)
  ours = os.path.join(path, TOKENIZER_FILE)
  if os.path.isfile(ours):
    return BpeTokenizer(tokenizers.Tokenizer.from_file(ours), ours)
  raise errors.NotFound(f"{path}: neither {TOKENIZER_FILE} (upgen BPE) nor {HF_CONFIG_FILE} "
                          "(Hugging Face tokenizer) found")


def load_recorded(data_dir: str, metadata: Optional[dict[str, Any]] = None) -> TextTokenizer:
  """The text tokenizer data_dir's records were written with, refused (naming both) when
  the one at its path now is another (recorded.load)."""
  return recorded.load(data_dir, "text_tokenizer", load, metadata)


def captions_file(path: str) -> str:
  """A captions.jsonl path given the file itself, DIR/captions.jsonl or DIR/train/captions.jsonl."""
  if os.path.isfile(path):
    return path
  for candidate in (os.path.join(path, "captions.jsonl"),
                    os.path.join(path, "train", "captions.jsonl")):
    if os.path.isfile(candidate):
      return candidate
  raise errors.NotFound(f"--captions {path}: not a file, and no captions.jsonl in it or in "
                          "its train/ folder")


def main(argv: Optional[list[str]] = None) -> int:
  """`upgen tokenizer text`: trains the caption BPE."""
  parser = errors.ArgumentParser(prog="upgen tokenizer text",
                                 description="Train a BPE text tokenizer on captions.")
  parser.add_argument("--captions", required=True,
                      help="captions.jsonl, or a folder with captions.jsonl or train/captions.jsonl.")
  parser.add_argument("--vocab-size", type=errors.whole(1), required=True,
                      help="Vocabulary size, special tokens included.")
  parser.add_argument("--out", required=True, help="Output folder for tokenizer.json.")
  parser.add_argument("--caption-key", default="caption", help="JSON key of the caption text.")
  args = parser.parse_args(argv)
  source = captions_file(args.captions)
  captions = [e["caption"] for e in sources.read_captions(
      source, caption_key=args.caption_key, require_images=False)]
  tok = train_bpe(captions, args.vocab_size, args.out)
  print(f"trained on {len(captions)} captions from {source}: vocab_size={tok.vocab_size}, "
        f"wrote {os.path.join(args.out, TOKENIZER_FILE)}")
  return 0
