"""`upgen eval probe`: a linear probe on a frozen model's image features (UPGen's claim that
its generative pretraining gives good features), beside the same probe on raw pixels and on
the image tokenizer's codes.

  upgen eval probe --workdir RUN --data IMAGES_DIR --label shape [--baselines]

- Features: the family's `image_features` (for UPGen: every transformer block's output,
  averaged over the image positions, for the image alone: the caption is [PAD] and kept out
  of attention, so it cannot give the label away; the decoder-only and encoder-decoder
  families: every decoder block's output over the positions that read image codes, the
  caption empty; GLIDE: every residual block of the UNet, averaged over space, for the image
  noised to t = T / 10 with the empty caption), concatenated over the blocks.
- Labels: field KEY of each record's "labels" (else of the record itself) in
  IMAGES_DIR/SPLIT/captions.jsonl; records without it are skipped. The shapes generator
  writes "labels" (shape, color, size, position) on its single-object examples.
- Classifier: multinomial logistic regression on features standardised with the training
  split's statistics, full-batch Adam (optax) with an L2 penalty, trained on --train-split
  and scored on --eval-split (labels not seen in training count as errors).
- Baselines (--baselines): the same probe on the pixels (at the tokenizer's image size, or
  the pixel family's, scaled to [0, 1]) and on the codes (one-hot per grid position; none for
  a run that reads pixels).
Prints one JSON object.
"""
from __future__ import annotations

import os
import sys
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from upgen import errors
from upgen import inference
from upgen.data import sources
from upgen.evaluators import command
from upgen.runtime import mesh as mesh_lib


def read_labeled(images_dir: str, split: str, key: str, limit: int
                 ) -> tuple[list[str], list[str]]:
  """(image paths, labels) of the first `limit` records of DIR/SPLIT that carry `key`."""
  paths, labels = [], []
  for entry in sources.read_captions(os.path.join(images_dir, split)):
    record = entry["record"]
    value = (record.get("labels") or {}).get(key, record.get(key))
    if isinstance(value, (str, int, bool)):
      paths.append(entry["image"])
      labels.append(str(value))
    if limit and len(paths) >= limit:
      break
  if not paths:
    raise errors.DataError(f"{os.path.join(images_dir, split)}/captions.jsonl: no record has a "
                           f"label {key!r} (in its \"labels\" or at the top level)")
  return paths, labels


def train_probe(train_x: np.ndarray, train_y: np.ndarray, eval_x: np.ndarray,
                eval_y: np.ndarray, num_classes: int, steps: int = 500, lr: float = 0.01,
                weight_decay: float = 1e-4) -> dict[str, float]:
  """Logistic regression on standardised features; eval labels < 0 (unseen) count as wrong."""
  mean, std = train_x.mean(0), train_x.std(0) + 1e-6
  xs = jnp.asarray((train_x - mean) / std, jnp.float32)
  xe = jnp.asarray((eval_x - mean) / std, jnp.float32)
  ys = jnp.asarray(train_y, jnp.int32)
  params = {"w": jnp.zeros((xs.shape[1], num_classes)), "b": jnp.zeros((num_classes,))}
  tx = optax.adam(lr)

  def loss(p):
    logits = xs @ p["w"] + p["b"]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, ys).mean()
    return ce + weight_decay * jnp.sum(p["w"] ** 2)

  @jax.jit
  def fit(p):
    def step(carry, _):
      p, s = carry
      g = jax.grad(loss)(p)
      u, s = tx.update(g, s, p)
      return (optax.apply_updates(p, u), s), None
    return jax.lax.scan(step, (p, tx.init(p)), None, length=steps)[0][0]

  params = fit(params)
  accuracy = lambda x, y: float(np.mean(np.asarray(jnp.argmax(x @ params["w"] + params["b"], -1))
                                        == y))
  return {"train_accuracy": accuracy(xs, np.asarray(train_y)),
          "eval_accuracy": accuracy(xe, np.asarray(eval_y)), "dims": int(xs.shape[1])}


def model_features(run: Any, inputs: np.ndarray, batch_size: int = 64
                   ) -> tuple[np.ndarray, int]:
  """(N x (layers * E) concatenated image features of the run, number of layers); `inputs`
  are the family's: codes N x Li, or uint8 pixels N x H x W x 3."""
  fn = run.setup.family.can("image_features")
  model = run.setup.model
  forward = jax.jit(lambda p, t: jnp.concatenate(fn(p, t, model=model), axis=1))
  layers = len(jax.eval_shape(lambda p, t: fn(p, t, model=model), run.params,
                              jax.ShapeDtypeStruct((1,) + inputs.shape[1:], inputs.dtype)))
  with mesh_lib.detached():
    out = [np.asarray(forward(run.params, inputs[i:i + batch_size]))
           for i in range(0, len(inputs), batch_size)]
  return np.concatenate(out), layers


def main(argv: Optional[list[str]] = None) -> int:
  parser = command.parser("probe", __doc__)
  parser.add_argument("--workdir", required=True, help="A trained run.")
  parser.add_argument("--data", required=True, help="Images directory with SPLIT/captions.jsonl.")
  parser.add_argument("--label", required=True, help="Record field to classify, e.g. shape.")
  parser.add_argument("--train-split", default="train")
  parser.add_argument("--eval-split", default="val")
  parser.add_argument("--num-train", type=errors.whole(0), default=2000, help="0: all.")
  parser.add_argument("--num-eval", type=errors.whole(0), default=500, help="0: all.")
  parser.add_argument("--steps", type=errors.whole(1), default=500)
  parser.add_argument("--lr", type=errors.number(0), default=0.01)
  parser.add_argument("--weight-decay", type=errors.number(0, above=False), default=1e-4)
  parser.add_argument("--baselines", action="store_true",
                      help="Also probe the pixels and the tokenizer's codes.")
  parser.add_argument("--json", default="")
  args = parser.parse_args(argv)
  run = inference.load_run(args.workdir)
  run.setup.family.can("image_features")
  tok = run.image_tokenizer  # None for the families that read pixels.
  size = tok.image_size if tok is not None else run.setup.spec.image_size
  splits = {}
  for name, split, limit in (("train", args.train_split, args.num_train),
                             ("eval", args.eval_split, args.num_eval)):
    paths, labels = read_labeled(args.data, split, args.label, limit)
    images = np.stack([sources.load_image(p, size) for p in paths])
    codes = (np.asarray(tok.encode(images)).reshape(len(images), -1) if tok is not None
             else None)
    splits[name] = {"images": images, "codes": codes, "labels": labels,
                    "inputs": codes if tok is not None else images}
  classes = sorted(set(splits["train"]["labels"]))
  index = {c: i for i, c in enumerate(classes)}
  y = {k: np.array([index.get(l, -1) for l in v["labels"]]) for k, v in splits.items()}
  fit = lambda train_x, eval_x: train_probe(train_x, y["train"], eval_x, y["eval"], len(classes),
                                            args.steps, args.lr, args.weight_decay)
  (train_f, layers), (eval_f, _) = (model_features(run, splits[k]["inputs"])
                                    for k in ("train", "eval"))
  result: dict[str, Any] = {
      "workdir": args.workdir, "data": args.data, "label": args.label, "classes": classes,
      "num_train": len(y["train"]), "num_eval": len(y["eval"]),
      "majority_baseline": float(np.mean(y["eval"] == np.bincount(y["train"]).argmax())),
      "model": dict(fit(train_f, eval_f), layers=layers)}
  if args.baselines:
    pixels = {k: v["images"].reshape(len(v["images"]), -1) / 255.0 for k, v in splits.items()}
    result["pixels"] = fit(pixels["train"], pixels["eval"])
    k = tok.codebook_size if tok is not None else 0
    if tok is None:
      result["codes"] = "not computed: the run reads pixels, it has no image tokenizer"
    elif splits["train"]["codes"].shape[1] * k <= 1 << 16:
      onehot = {n: np.eye(k, dtype=np.float32)[v["codes"]].reshape(len(v["codes"]), -1)
                for n, v in splits.items()}
      result["codes"] = fit(onehot["train"], onehot["eval"])
    else:
      result["codes"] = "not computed: one-hot codes would have more than 65,536 dimensions"
  command.emit(result, args.json, indent=2)
  return 0


if __name__ == "__main__":
  sys.exit(main())
