"""Curves of metrics.jsonl from several runs, one panel per metric, as a PNG.

  python scripts/plot_metrics.py --out docs/images/x.png --metric loss_image \
      --metric text_ppl/perplexity --run "LM start=/tmp/runs/a" --run "random=/tmp/runs/b"

Needs matplotlib, which upgen itself does not (`pip install matplotlib` in any Python with
numpy). Each panel plots the rows that have the metric (training rows every log_every
steps, evaluation rows every eval_every steps); --smooth N averages training curves over N
logged points.
"""
import argparse
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np


def read(run_dir, metric):
  steps, values = [], []
  with open(os.path.join(run_dir, "metrics.jsonl")) as f:
    for line in f:
      row = json.loads(line)
      if metric in row:
        steps.append(row["step"])
        values.append(row[metric])
  return np.asarray(steps), np.asarray(values, float)


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", required=True)
  p.add_argument("--metric", action="append", required=True)
  p.add_argument("--run", action="append", required=True, help="LABEL=RUN_DIR")
  p.add_argument("--smooth", type=int, default=1)
  p.add_argument("--title", default="")
  p.add_argument("--log", action="append", default=[], help="Metrics on a log scale.")
  p.add_argument("--hline", action="append", default=[],
                 help="METRIC=VALUE:LABEL, a reference line on that metric's panel.")
  p.add_argument("--xmax", type=int, default=0, help="Last step shown (0: all).")
  args = p.parse_args()
  runs = [r.split("=", 1) for r in args.run]
  fig, axes = plt.subplots(1, len(args.metric), figsize=(4.8 * len(args.metric), 3.6),
                           squeeze=False)
  for ax, metric in zip(axes[0], args.metric):
    for label, run_dir in runs:
      steps, values = read(run_dir, metric)
      if not len(steps):
        continue
      if args.smooth > 1 and len(values) > args.smooth and not metric.startswith(("val_", "text_ppl")):
        kernel = np.ones(args.smooth) / args.smooth
        values = np.convolve(values, kernel, mode="valid")
        steps = steps[args.smooth - 1:]
      ax.plot(steps, values, label=label, marker="o" if len(steps) < 15 else None, ms=3)
    for line in args.hline:
      name, _, rest = line.partition("=")
      value, _, label = rest.partition(":")
      if name == metric:
        ax.axhline(float(value), color="gray", ls="--", lw=1, label=label)
    if args.xmax:
      ax.set_xlim(0, args.xmax)
    ax.set_xlabel("step")
    ax.set_title(metric)
    if metric in args.log:
      ax.set_yscale("log")
    ax.grid(alpha=0.3)
  for ax in axes[0]:
    ax.legend(fontsize=7)
  if args.title:
    fig.suptitle(args.title)
  fig.tight_layout()
  fig.savefig(args.out, dpi=110)


if __name__ == "__main__":
  main()
