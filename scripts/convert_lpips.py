"""Writes the LPIPS-VGG weights file that `upgen eval recon --lpips FILE` and
`upgen quickstart --lpips FILE` read, from the PyTorch checkpoints LPIPS is published as.
A one-off on a machine with torch (running upgen never needs it):

  python scripts/convert_lpips.py --vgg vgg16-397923af.pth --out lpips_vgg.safetensors

--vgg  torchvision's ImageNet VGG16 state dict (`features.N.weight` / `.bias`), the file
       torchvision caches as vgg16-397923af.pth.
--lin  LPIPS's linear heads (`lin0.model.1.weight` ... `lin4...`); default: the v0.1
       vgg.pth that the `lpips` package ships.

Both are read with torch.load(weights_only=True): tensors only, no pickled code. The output
holds the `lpips` package's state-dict names and PyTorch layouts (upgen/models/image_metrics.py
transposes them when it loads them).
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from upgen.models import image_metrics  # pylint: disable=wrong-import-position

SHIFT = (-0.030, -0.088, -0.188)  # LPIPS's ScalingLayer.
SCALE = (0.458, 0.448, 0.450)


def convert(vgg_state: dict, lin_state: dict) -> dict[str, np.ndarray]:
  """torchvision VGG16 + LPIPS heads (name -> array-like) -> the upgen file's tensors."""
  out = {"scaling_layer.shift": np.array(SHIFT, np.float32).reshape(1, 3, 1, 1),
         "scaling_layer.scale": np.array(SCALE, np.float32).reshape(1, 3, 1, 1)}
  for s, convs in image_metrics.LPIPS_SLICES:
    for i in convs:
      for part in ("weight", "bias"):
        key = f"features.{i}.{part}"
        if key not in vgg_state:
          raise KeyError(f"the VGG16 state dict has no {key!r} (torchvision's vgg16 names)")
        out[f"net.slice{s}.{i}.{part}"] = np.asarray(vgg_state[key], np.float32)
  for layer in range(len(image_metrics.LPIPS_CHANNELS)):
    key = f"lin{layer}.model.1.weight"
    if key not in lin_state:
      raise KeyError(f"the LPIPS heads have no {key!r}")
    out[key] = np.asarray(lin_state[key], np.float32)
  return out


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--vgg", required=True)
  parser.add_argument("--lin", default="")
  parser.add_argument("--out", required=True)
  args = parser.parse_args(argv)
  import torch
  lin = args.lin
  if not lin:
    import lpips
    lin = os.path.join(os.path.dirname(lpips.__file__), "weights", "v0.1", "vgg.pth")
  load = lambda p: {k: v.numpy() for k, v in
                    torch.load(p, map_location="cpu", weights_only=True).items()}
  image_metrics.save_lpips(convert(load(args.vgg), load(lin)), args.out)
  print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
