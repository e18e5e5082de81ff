"""Shared by the GPT-2 tests: a byte-level BPE GPT-2 tokenizer trained offline on a few
words, a tiny random transformers FlaxGPT2LMHeadModel, and records (text-only or paired)
tokenized with that tokenizer through the real record writer."""
import os

import numpy as np

from upgen.data import records
from upgen.tokenizers import text as text_lib

END = "<|endoftext|>"
WORDS = ("red green blue small large circle square triangle on left right top bottom of the "
         "a an and with near far above below").split()


def lines(n, seed, lo=3, hi=30):
  rng = np.random.default_rng(seed)
  return [" ".join(rng.choice(WORDS, int(rng.integers(lo, hi)))) for _ in range(n)]


def tokenizer(root):
  """A GPT-2 tokenizer (one id for unk, bos, eos; no pad, no mask) saved in `root`."""
  from tokenizers import ByteLevelBPETokenizer
  from transformers import GPT2TokenizerFast
  os.makedirs(root, exist_ok=True)
  bpe = ByteLevelBPETokenizer()
  bpe.train_from_iterator(lines(200, 0), vocab_size=300, min_frequency=1,
                          special_tokens=[END], show_progress=False)
  bpe.save_model(str(root))
  tok = GPT2TokenizerFast(vocab_file=os.path.join(root, "vocab.json"),
                          merges_file=os.path.join(root, "merges.txt"),
                          unk_token=END, bos_token=END, eos_token=END)
  tok.save_pretrained(str(root))
  return tok


def hf_model(tok, context, width, layers=2, heads=4, seed=0):
  from transformers import FlaxGPT2LMHeadModel, GPT2Config
  config = GPT2Config(vocab_size=len(tok), n_positions=context, n_embd=width, n_layer=layers,
                      n_head=heads, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                      bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
  return FlaxGPT2LMHeadModel(config, seed=seed)


def write_records(path, tok_dir, paired, num_train=64, num_val=16, grid=(2, 2), vocab=8):
  """Records of `lines` captions tokenized by the tokenizer in tok_dir; paired ones carry
  image codes that are a function of the caption's first token (learnable)."""
  tok = text_lib.load(str(tok_dir))
  image_info = {"identity": {"name": "test-image"}, "codebook_size": vocab, "grid": list(grid),
                "image_size": 8, "path": "/nonexistent/image"}
  for split, n, seed in (("train", num_train, 10), ("val", num_val, 11)):
    examples = []
    for i, caption in enumerate(lines(n, seed, 2, 12 if paired else 40)):
      ids = np.asarray(tok.encode(caption), np.int64)
      image = (ids[0] * 3 + np.arange(grid[0] * grid[1])) % vocab if paired else None
      examples.append({"image_tokens": image, "text_tokens": ids, "caption": caption,
                       "id": f"{split}{i}"})
    info = records.write_split(str(path), split, iter(examples), 2)
    records.update_metadata(str(path), split, info, records.text_tokenizer_info(tok),
                            image_info if paired else None)
  return str(path)
