"""Throughput of `upgen tokenize` per process (#32): records/s for read (tar member read, JPEG
decode, resize + crop), image encode and text encode, at 32 px (configs/vqgan.py:tiny) and
256 px (configs/vqgan.py:base, taming's f16 architecture), on webdataset shards of JPEG
photos this script writes.

  python scripts/tokenize_throughput.py --out /tmp/tp [--num 512] [--sizes 32,256]
      [--dtype float32] [--batch-size 32] [--json results.json]

Each image tokenizer is a VQGAN run trained for one step (its weights do not change the
cost). The figures are the job's own summary line (`process 0: N examples in T s (R/s;
read a s, image_tokens b s, ...)`), one compile of the encoder included; the steady encode
rate is timed apart, in this process, on the same batch size after a warm-up call. Prints a
table and writes the rows as JSON with --json.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import time

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from configs import vqgan as vqgan_config  # noqa: E402
from upgen.data import sources  # noqa: E402
from upgen.tokenizers import image  # noqa: E402
from upgen.tokenizers import text  # noqa: E402
from upgen.train import trainer  # noqa: E402

PER_TAR = 64
SUMMARY = re.compile(r"process \d+: (\d+) examples in ([\d.]+) s \(([\d.]+)/s; ([^)]*)\)")


def photo(i: int, rng: np.random.Generator) -> np.ndarray:
  """A 384x288 'photo': smooth gradients plus noise, so JPEG has real work to do."""
  y, x = np.mgrid[0:288, 0:384]
  base = np.stack([x * (i % 7 + 1) / 8, y * (i % 5 + 1) / 6, (x + y) / 3], -1) % 256
  return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


def write_data(out: str, num: int) -> tuple[str, str]:
  """(wds folder, image folder with train/ and val/) of `num` JPEG photos."""
  rng = np.random.default_rng(0)
  tars, folder = os.path.join(out, "wds"), os.path.join(out, "folder")
  os.makedirs(tars, exist_ok=True)
  rows = []
  os.makedirs(os.path.join(folder, "train", "images"), exist_ok=True)
  for t in range(0, num, PER_TAR):
    with tarfile.open(os.path.join(tars, f"{t // PER_TAR:05d}.tar"), "w") as tar:
      for i in range(t, min(t + PER_TAR, num)):
        buf = io.BytesIO()
        Image.fromarray(photo(i, rng)).save(buf, format="JPEG", quality=90)
        caption = f"a photo number {i} of a gradient with noise"
        for name, data in ((f"{i:09d}.jpg", buf.getvalue()), (f"{i:09d}.txt", caption.encode())):
          info = tarfile.TarInfo(name)
          info.size = len(data)
          tar.addfile(info, io.BytesIO(data))
        if i < 16:  # A few for the one-step VQGAN runs.
          path = os.path.join(folder, "train", "images", f"{i}.jpg")
          with open(path, "wb") as f:
            f.write(buf.getvalue())
          rows.append({"image": f"images/{i}.jpg", "caption": caption})
  sources.write_captions(os.path.join(folder, "train"), rows)
  sources.write_captions(os.path.join(folder, "val"), [dict(r, image="../train/" + r["image"])
                                                       for r in rows[:4]])
  return tars, folder


def vqgan_run(out: str, folder: str, size: int, dtype: str) -> str:
  workdir = os.path.join(out, f"vqgan{size}")
  if not os.path.exists(os.path.join(workdir, "checkpoints")):
    config = vqgan_config.get_config("tiny" if size == 32 else "base")
    config.update_from_flattened_dict({
        "data.dir": folder, "data.batch_size": 2, "data.image_size": size, "train.steps": 1,
        "train.progress": False, "train.eval_batches": 1, "train.sample_every": 0,
        "train.checkpoint_every": 1, "model.dtype": dtype})
    trainer.train(config, workdir)
  return workdir


def tokenize(tars: str, out: str, bpe: str, batch_size: int, run: str = "",
             size: int = 0) -> dict:
  args = [sys.executable, "-m", "upgen.cli", "tokenize", "--source", f"wds:{tars}", "--out", out,
          "--text-tokenizer", bpe, "--val-fraction", "0", "--batch-size", str(batch_size)]
  args += ["--image-tokenizer", run] if run else ["--pixels", "--image-size", str(size)]
  done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=True)
  n, seconds, rate, stages = SUMMARY.search(done.stdout).groups()
  return {"examples": int(n), "seconds": float(seconds), "records_per_s": float(rate),
          "stages": {k: float(v.split()[0]) for k, v in
                     (s.strip().split(" ", 1) for s in stages.split(","))}}


def steady_encode(run: str, batch_size: int, repeats: int = 3) -> tuple[float, float]:
  """(images/s after a warm-up call, XLA's FLOP count of the encoder per image)."""
  tok = image.load(run, batch_size)
  batch = np.random.default_rng(0).integers(0, 256, (batch_size, tok.image_size,
                                                     tok.image_size, 3), dtype=np.uint8)
  tok.encode(batch)
  start = time.perf_counter()
  for _ in range(repeats):
    tok.encode(batch)
  rate = repeats * batch_size / (time.perf_counter() - start)
  compiled = tok._encode.lower(tok._params, batch).compile()  # pylint: disable=protected-access
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  return rate, float(cost["flops"]) / batch_size


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", required=True)
  p.add_argument("--num", type=int, default=512)
  p.add_argument("--sizes", default="32,256")
  p.add_argument("--dtype", default="float32", help="the VQGAN's compute dtype")
  p.add_argument("--batch-size", type=int, default=32)
  p.add_argument("--json")
  args = p.parse_args()
  tars, folder = write_data(args.out, args.num)
  captions = [f"a photo number {i} of a gradient with noise" for i in range(args.num)]
  bpe = text.train_bpe(captions, 128, os.path.join(args.out, "bpe")).path
  rows = []
  for size in [int(s) for s in args.sizes.split(",")]:
    run = vqgan_run(args.out, folder, size, args.dtype)
    read = tokenize(tars, os.path.join(args.out, f"pixels{size}"), bpe, args.batch_size,
                    size=size)
    job = tokenize(tars, os.path.join(args.out, f"records{size}"), bpe, args.batch_size, run)
    row = {"image_size": size, "dtype": args.dtype, "batch_size": args.batch_size,
           "read_only": read, "tokenize": job,
           "load_average": os.getloadavg()[0]}
    row["steady_encode_per_s"], row["encode_flops_per_image"] = steady_encode(
        run, args.batch_size)
    rows.append(row)
    print(f"{size:>4} px: read+resize {read['examples'] / read['stages']['read']:.0f}/s, "
          f"job {job['records_per_s']:.1f} records/s ({job['stages']}), steady encode "
          f"{row['steady_encode_per_s']:.1f} images/s "
          f"({row['encode_flops_per_image'] / 1e9:.4g} GFLOP each), load {row['load_average']:.1f}",
          flush=True)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(rows, f, indent=1)


if __name__ == "__main__":
  main()
