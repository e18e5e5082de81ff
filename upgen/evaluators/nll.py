"""`upgen eval nll --workdir W [--split val] [--num 256]`: how likely a trained model finds
the held-out images given their captions, in nats per image token (token families) or bits
per dimension (families that model pixels: the diffusion family's variational bound).

The families report comparable numbers: the decoder-only model's is its exact next-token
likelihood; UPGen's factorizes the same joint one token per step in raster order (each
step scores one token with the earlier ones given and the rest masked), which is a
likelihood the masked model defines. Both read the records in file order, so two runs on
the same data score the same examples.
"""
from __future__ import annotations

import functools
import sys
from typing import Optional

import jax
import numpy as np

from upgen import errors
from upgen.data import readers
from upgen.evaluators import command
from upgen.runtime import restore


def image_nll(workdir: str, split: str = "val", num: int = 256, batch_size: int = 64) -> dict:
  """Mean -log p(image | caption) over the first `num` paired examples of `split`."""
  config, setup, params = restore.restore_params(workdir)
  nll = setup.family.can("image_nll")
  config = config.copy_and_resolve_references()
  config.data.batch_size = batch_size
  score = jax.jit(functools.partial(nll, model=setup.model))
  in_pixels = setup.family.reads is readers.PIXEL_RECORDS
  totals, units = [], 0
  for batch in setup.family.reads.eval_iterator(config, setup.spec, split, None):
    paired = np.asarray(batch["has_image"], bool) & np.asarray(batch["has_text"], bool)
    totals.extend(np.asarray(score(params, batch))[paired].tolist())
    units = int(np.prod(np.shape(batch["pixels"])[1:]) if in_pixels
                else np.shape(batch["image_tokens"])[1])
    if len(totals) >= num:
      break
  if not totals:
    raise errors.DataError(
        f"{config.data.dir}: no paired examples in split {split!r} (need at least "
        f"one full batch of {batch_size})")
  totals = totals[:num]
  per_image = float(np.mean(totals))
  out = {"family": setup.family.name, "split": split, "num": len(totals),
         "nll_per_image": per_image}
  if in_pixels:  # Images in [0, 255] with 256 bins per dimension.
    return dict(out, bits_per_dim=per_image / units / np.log(2))
  return dict(out, nll_per_image_token=per_image / units,
              bits_per_image_token=per_image / units / np.log(2))


def main(argv: Optional[list[str]] = None) -> int:
  parser = command.parser("nll", __doc__)
  parser.add_argument("--workdir", required=True, help="Run directory of `upgen train`.")
  parser.add_argument("--split", default="val")
  parser.add_argument("--num", type=errors.whole(1), default=256, help="Examples scored (file order).")
  parser.add_argument("--batch-size", type=errors.whole(1), default=64)
  args = parser.parse_args(argv)
  result = image_nll(args.workdir, args.split, args.num, args.batch_size)
  command.emit(result)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
