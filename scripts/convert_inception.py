"""Writes the Inception-v3 weights file that `upgen eval fid --features inception:FILE` reads,
from pytorch-fid's published checkpoint. A one-off on a machine with torch (running upgen
never needs it):

  python scripts/convert_inception.py --from pt_inception-2015-12-05-6726825d.pth \
      --out pt_inception.safetensors

The checkpoint is read with torch.load(weights_only=True) (tensors only, no pickled code);
the output keeps pytorch-fid's state-dict names and PyTorch layouts, without the classifier
(upgen/evaluators/inception.py transposes the kernels and folds the batch norms when it loads them).
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from upgen.evaluators import inception  # pylint: disable=wrong-import-position


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--from", dest="source", required=True)
  parser.add_argument("--out", required=True)
  args = parser.parse_args(argv)
  import torch
  state = torch.load(args.source, map_location="cpu", weights_only=True)
  inception.save({k: v.numpy() for k, v in state.items() if k in inception.tensor_shapes()},
                 args.out)
  print(f"wrote {args.out} ({len(inception.tensor_shapes())} tensors)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
