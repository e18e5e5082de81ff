"""`upgen align --workdir INIT --data RECORDS`: image-code embeddings aligned to a language
model's word embeddings, the paper's "image-text token contrastive alignment", as the start
of the rows the vocabulary expansion adds (`--config.train.init_new_rows=contrastive`).

INIT is an `upgen import hf` directory or a run of the decoder-only family's "gpt2"
architecture; RECORDS are paired records tokenized with its text tokenizer. An example's
caption is the mean of its tokens' (frozen) LM embeddings, its image the mean of its codes'
embeddings (new, trained); both are L2-normalized, and CLIP's symmetric contrastive loss with
a learnable temperature over the batch trains only the image embeddings (and the
temperature). Written into INIT:

  aligned_params/  the token table the run will have: INIT's text rows, the document tokens
                   and <pad> (normal, std 0.02, as a fresh init), the aligned code rows scaled
                   to the text rows' mean norm, zero padding rows (an untied output
                   table, config.model.tie_embeddings=False, starts its new rows fresh)
  align.json       the loss and temperature curves, the in-batch retrieval accuracy on the
                   validation split at the start and the end, and the nearest text tokens of
                   the first codes (the paper found them "noisy, semantically void")
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from configs import dalle as dalle_config
from upgen import errors
from upgen import rundir
from upgen.data import readers
from upgen.models import dalle_gpt2
from upgen.models import layers
from upgen.runtime import init_from
from upgen.runtime import restore
from upgen.tokenizers import text as text_lib

TABLE = "token_embed/embedding"


def _bags(table_VxE, ids_BxL, valid_BxL):
  """L2-normalized mean embedding of each row's valid ids."""
  emb = jnp.take(table_VxE, ids_BxL, axis=0)
  w = valid_BxL.astype(jnp.float32)[..., None]
  mean = jnp.sum(emb * w, 1) / jnp.maximum(jnp.sum(w, 1), 1.0)
  return mean / jnp.maximum(jnp.linalg.norm(mean, axis=-1, keepdims=True), 1e-6)


def contrastive_loss(image_VixE, log_temp, text_VtxE, batch) -> tuple[jax.Array, jax.Array]:
  """(CLIP's symmetric loss, in-batch image->text top-1 accuracy) of a batch."""
  valid = jnp.asarray(batch["text_mask"], bool) & jnp.asarray(batch["has_text"], bool)[:, None]
  text_BxE = _bags(text_VtxE, jnp.asarray(batch["text_tokens"], jnp.int32), valid)
  codes = jnp.asarray(batch["image_tokens"], jnp.int32)
  image_BxE = _bags(image_VixE, codes, jnp.ones(codes.shape, bool))
  logits = jnp.exp(jnp.minimum(log_temp, np.log(100.0))) * image_BxE @ text_BxE.T
  labels = jnp.arange(logits.shape[0])
  loss = (optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
          + optax.softmax_cross_entropy_with_integer_labels(logits.T, labels).mean()) / 2
  return loss, jnp.mean((jnp.argmax(logits, 1) == labels).astype(jnp.float32))


def align(init_dir: str, data_dir: str, steps: int = 2000, batch_size: int = 256,
          lr: float = 1e-2, seed: int = 0, log_every: int = 50) -> dict[str, Any]:
  source = init_from.source_params(init_dir)
  if TABLE not in source:
    raise errors.ConfigError(f"{init_dir}: no {TABLE} (align needs a decoder-only \"gpt2\" "
                             "language model: an `upgen import hf --family dalle` directory "
                             "or such a run)")
  text = jnp.asarray(source[TABLE], jnp.float32)
  config = dalle_config.get_config("gpt2_tiny")
  config.data.dir, config.data.batch_size, config.seed = data_dir, batch_size, seed
  spec = readers.TOKEN_RECORDS.spec(config.data)
  if not spec.image_vocab_size:
    raise errors.DataError(f"{data_dir}: records without image tokens; align needs paired ones")
  # The text ids: the tokenizer's, or all of an imported LM's rows where it has more (the
  # run's config.model.lm_vocab_size), so the document tokens sit where the run has them.
  text_ids = max(spec.text_vocab_size,
                 int(init_from.architecture(init_dir).get("lm_vocab_size") or 0))
  if text_ids > text.shape[0]:
    raise errors.DataError(f"{data_dir}: its text tokenizer has {spec.text_vocab_size} ids, "
                           f"{init_dir}'s table {text.shape[0]} rows: tokenize the records "
                           f"with --text-tokenizer {init_dir}/{rundir.TOKENIZER_DIR}")
  text = text[:text_ids]
  rng = jax.random.key(seed)
  params = {"image": layers.embed_init(rng, (spec.image_vocab_size, text.shape[1])),
            "log_temp": jnp.asarray(np.log(1 / 0.07), jnp.float32)}
  tx = optax.adam(lr)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, batch):
    (loss, acc), grads = jax.value_and_grad(
        lambda p: contrastive_loss(p["image"], p["log_temp"], text, batch), has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, acc

  evaluate = jax.jit(lambda p, b: contrastive_loss(p["image"], p["log_temp"], text, b))
  val_batch = next(iter(readers.TOKEN_RECORDS.eval_iterator(config, spec, "val", None)))
  start = [float(x) for x in evaluate(params, val_batch)]
  train_iter = readers.TOKEN_RECORDS.train_iterator(config, spec, None)
  curve = []
  for i in range(1, steps + 1):
    params, opt_state, loss, acc = step(params, opt_state, next(train_iter))
    if i % log_every == 0 or i == steps:
      curve.append({"step": i, "loss": float(loss), "acc": float(acc),
                    "temperature": float(jnp.exp(params["log_temp"]))})
  end = [float(x) for x in evaluate(params, val_batch)]

  lay = dalle_gpt2.Layout(text_ids, spec.image_vocab_size, spec.text_seq_len,
                          spec.image_seq_len)
  image = np.asarray(params["image"])
  norm = float(np.linalg.norm(np.asarray(text), axis=1).mean())
  image = image / np.linalg.norm(image, axis=1, keepdims=True) * norm
  table = np.zeros((layers.pad_vocab(lay.vocab_size), text.shape[1]), np.float32)
  table[:lay.text_vocab_size] = np.asarray(text)
  table[lay.text_vocab_size:lay.image_offset] = np.asarray(layers.embed_init(
      jax.random.fold_in(rng, 1), (lay.image_offset - lay.text_vocab_size, text.shape[1])))
  table[lay.image_offset:lay.vocab_size] = image
  restore.save_params(os.path.join(init_dir, rundir.ALIGNED_DIR),
                        {"token_embed": {"embedding": table}})
  unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
  words = np.asarray(text[:spec.text_vocab_size])  # The ids the tokenizer can decode.
  nearest = np.argsort(-(unit(image[:8]) @ unit(words).T), axis=1)[:, :5]
  report = {"init": init_dir, "data": data_dir, "steps": steps, "batch_size": batch_size,
            "lr": lr, "val_start": {"loss": start[0], "acc": start[1]},
            "val_end": {"loss": end[0], "acc": end[1]}, "curve": curve,
            "nearest_text_ids": nearest.tolist(), "rows": int(table.shape[0])}
  tok_dir = os.path.join(init_dir, rundir.TOKENIZER_DIR)
  if os.path.isdir(tok_dir):
    tok = text_lib.load(tok_dir)
    report["nearest_text_tokens"] = [[tok.decode([i]) for i in row] for row in nearest]
  with open(os.path.join(init_dir, "align.json"), "w") as f:
    json.dump(report, f, indent=1)
  return report


def main(argv: Optional[list[str]] = None) -> int:
  parser = errors.ArgumentParser(prog="upgen align", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", required=True, help="INIT (import) or gpt2 LM run directory.")
  parser.add_argument("--data", required=True, help="Paired records (upgen tokenize).")
  parser.add_argument("--steps", type=errors.whole(1), default=2000)
  parser.add_argument("--batch-size", type=errors.whole(1), default=256)
  parser.add_argument("--lr", type=errors.number(0), default=1e-2)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  r = align(args.workdir, args.data, args.steps, args.batch_size, args.lr, args.seed)
  print(json.dumps({k: r[k] for k in ("val_start", "val_end", "rows")}))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
