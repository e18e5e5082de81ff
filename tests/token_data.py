"""Shared test helpers: small pre-tokenized record sets written with the real record
writer, and test-sized configs of any family.

Each example's image tokens are a function of its caption's first token, so a model can
learn something and losses fall.
"""
import importlib
import os

import numpy as np

from upgen.data import records

IMAGE_VOCAB, TEXT_VOCAB, GRID = 16, 24, (2, 4)
TEXT_INFO = {"identity": {"name": "test-text"}, "vocab_size": TEXT_VOCAB, "pad_id": 0,
             "mask_id": 1, "bos_id": 2, "eos_id": 3, "path": "/nonexistent/text"}
IMAGE_INFO = {"identity": {"name": "test-image"}, "codebook_size": IMAGE_VOCAB,
              "grid": list(GRID), "image_size": 8, "path": "/nonexistent/image"}


def example(i: int, rng: np.random.Generator) -> dict:
  text = rng.integers(5, TEXT_VOCAB, size=int(rng.integers(2, 6)))
  li = GRID[0] * GRID[1]
  image = (text[0] * 3 + np.arange(li)) % IMAGE_VOCAB
  return {"image_tokens": image, "text_tokens": text, "caption": f"caption {i}", "id": str(i)}


def write(path: str, num_train: int = 64, num_val: int = 16, seed: int = 0) -> str:
  os.makedirs(path, exist_ok=True)
  for split, n, s in (("train", num_train, seed), ("val", num_val, seed + 1)):
    rng = np.random.default_rng(s)
    info = records.write_split(path, split, (example(i, rng) for i in range(n)), 2)
    records.update_metadata(path, split, info, TEXT_INFO, IMAGE_INFO)
  return path


def pixel_batch(b: int = 4, seed: int = 0, size: int = 16, text_len: int = 6,
                text_vocab: int = 20) -> dict:
  """A batch of pixel records' layout: random images, captions of 1..text_len tokens."""
  rng = np.random.default_rng(seed)
  n = rng.integers(1, text_len + 1, b)
  mask = np.arange(text_len)[None] < n[:, None]
  return {"pixels": rng.integers(0, 256, (b, size, size, 3)).astype(np.uint8),
          "text_tokens": np.where(mask, rng.integers(4, text_vocab, (b, text_len)),
                                  0).astype(np.int32),
          "text_mask": mask, "has_image": np.ones(b, bool), "has_text": np.ones(b, bool),
          "image_tokens": np.zeros((b, 0), np.int32)}


def tiny_overrides(data_dir: str) -> dict:
  """Flattened config overrides for a seconds-fast UPGen on these records."""
  return {
      "data.dir": data_dir, "data.batch_size": 8, "data.text_dropout": 0.0,
      "model.num_layers": 2, "model.emb_dim": 32, "model.num_heads": 2, "model.mlp_dim": 64,
      "data.text_seq_len": 6, "optim.warmup_steps": 2, "train.progress": False,
      "train.sample_every": 0,
      "train.eval_batches": 1,
  }


# Test-sized architectures: every key a family's tiny config has is shrunk to this.
SMALL = {"emb_dim": 32, "num_heads": 2, "mlp_dim": 64, "base_channels": 4, "codebook_size": 8,
         "embedding_dim": 4,
         # GLIDE's UNet and text transformer.
         "model_channels": 16, "num_res_blocks": 1, "norm_groups": 4, "num_head_channels": 8,
         "text_layers": 1, "text_width": 32, "text_heads": 2}


def small_config(family: str, num_layers: int = 1, **keys):
  """configs/<family>.py:tiny at test size; each of `keys` is set in the group (model,
  loss, data) that has it."""
  config = importlib.import_module(f"configs.{family}").get_config("tiny")
  config.model.update({k: v for k, v in {**SMALL, "num_layers": num_layers}.items()
                       if k in config.model})
  for k, v in keys.items():
    group = next((g for g in (config.model, config.loss, config.data) if k in g), None)
    if group is None:
      raise KeyError(f"configs/{family}.py has no key {k!r} in model, loss or data")
    group[k] = v
  return config
