"""`upgen eval recon`: an image tokenizer's reconstructions of a folder's images, scored.

  upgen eval recon --workdir VQ_RUN --data IMAGES_DIR [--split val] [--num 500]
      [--lpips lpips_vgg.safetensors]

PSNR, SSIM (scikit-image's Gaussian variant) and, with a weights file from
scripts/convert_lpips.py, LPIPS-VGG, per image and averaged (models/image_metrics.py).
"""
from __future__ import annotations

import os
import sys
from typing import Optional

import numpy as np

from upgen import errors
from upgen.data import sources
from upgen.evaluators import command
from upgen.models import image_metrics
from upgen.tokenizers import image as image_tokenizer


def main(argv: Optional[list[str]] = None) -> int:
  parser = command.parser("recon", __doc__)
  parser.add_argument("--workdir", required=True, help="An image tokenizer's run directory.")
  parser.add_argument("--data", required=True,
                      help="Images directory (SPLIT/captions.jsonl + images, as the "
                           "shapes generator writes).")
  parser.add_argument("--split", default="val")
  parser.add_argument("--num", type=errors.whole(0), default=500, help="Images scored (0 = all).")
  parser.add_argument("--lpips", default="", help="LPIPS-VGG weights (safetensors).")
  parser.add_argument("--json", default="", help="Also write the result here.")
  args = parser.parse_args(argv)
  lpips_params = image_metrics.load_lpips(args.lpips) if args.lpips else None
  tok = image_tokenizer.load(args.workdir)
  src = sources.ImageFolderSource(os.path.join(args.data, args.split), tok.image_size)
  n = len(src) if args.num <= 0 else min(args.num, len(src))
  images = np.stack([src[i]["image"] for i in range(n)])
  recon = np.asarray(tok.decode(tok.encode(images)))
  result = {"workdir": args.workdir, "data": os.path.join(args.data, args.split), "num": n,
            **image_metrics.reconstruction_metrics(images, recon, lpips_params)}
  command.emit(result, args.json, indent=2)
  return 0


if __name__ == "__main__":
  sys.exit(main())
