"""Metric sinks: W/metrics.jsonl (one object per logged step) and TensorBoard event files.

Only process 0 writes. TensorBoard events are written without TensorFlow (see
`upgen.runtime.tensorboard`). In cloud storage (a gs:// workdir) both files are uploaded whole
on flush, at most every upgen.paths.SYNC_SECONDS, and on close.
"""
from __future__ import annotations

import json
import math
from typing import Any, Mapping, Optional

import jax
import numpy as np

from upgen import paths
from upgen import rundir
from upgen.runtime import tensorboard as tb


def _jsonable(v: Any) -> Any:
  v = np.asarray(v).item() if np.ndim(v) == 0 else np.asarray(v).tolist()
  if isinstance(v, float) and not math.isfinite(v):
    return str(v)  # "nan" / "inf": valid JSON, and visible.
  return v


def truncate_metrics(workdir: str, last_step: int) -> None:
  """Drops rows logged after `last_step` (a resumed run re-logs those steps)."""
  path = paths.join(workdir, rundir.METRICS_FILE)
  if jax.process_index() != 0 or not paths.exists(path):
    return
  kept = []
  with paths.open(path) as f:
    for line in f:
      try:
        row = json.loads(line)
      except json.JSONDecodeError:
        continue  # A line cut short by a kill.
      if int(row.get("step", 0)) <= last_step:
        kept.append(line if line.endswith("\n") else line + "\n")
  paths.write_atomic(path, "".join(kept))


def read_metrics(workdir: str) -> list[dict]:
  with paths.open(paths.join(workdir, rundir.METRICS_FILE)) as f:
    return [json.loads(line) for line in f if line.strip()]


class MetricWriter:
  """Appends metrics.jsonl rows and mirrors scalars / images to TensorBoard."""

  def __init__(self, workdir: str, *, tensorboard: bool = True):
    self.active = jax.process_index() == 0
    self._jsonl = None
    self._tb = None
    if not self.active:
      return
    paths.makedirs(workdir)
    self._jsonl = paths.open_synced(paths.join(workdir, rundir.METRICS_FILE), "a")
    if tensorboard:
      self._tb = tb.EventWriter(paths.join(workdir, "tensorboard"))

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    if not self.active:
      return
    row = {"step": int(step)}
    row.update({k: _jsonable(v) for k, v in sorted(scalars.items())})
    self._jsonl.write(json.dumps(row) + "\n")
    self._jsonl.flush()
    if self._tb is not None:
      for k, v in scalars.items():
        if np.ndim(v) == 0:
          self._tb.scalar(k, float(v), step)
      self._tb.flush()

  def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
    """images: name -> uint8 HxWx3 (e.g. a sample grid)."""
    if self.active and self._tb is not None:
      for k, v in images.items():
        self._tb.image(k, np.asarray(v), step)
      self._tb.flush()

  def close(self) -> None:
    if self._jsonl is not None:
      self._jsonl.close()
    if self._tb is not None:
      self._tb.close()


def image_grid(images_NxHxWx3: np.ndarray, columns: Optional[int] = None, pad: int = 1) -> np.ndarray:
  """Tiles uint8 images into one grid image with `pad` pixels of gray between them."""
  images = np.asarray(images_NxHxWx3)
  n, h, w, c = images.shape
  columns = columns or int(math.ceil(math.sqrt(n)))
  rows = int(math.ceil(n / columns))
  grid = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, c), 64, np.uint8)
  for i in range(n):
    r, col = divmod(i, columns)
    y, x = pad + r * (h + pad), pad + col * (w + pad)
    grid[y:y + h, x:x + w] = images[i]
  return grid


def sample_grid(images_NxHxWx3: np.ndarray, per_prompt: int = 1, *, min_cell: int = 64,
                pad: int = 1, gap: int = 5) -> tuple[np.ndarray, list[tuple[int, int]]]:
  """A near-square grid of samples: each prompt's `per_prompt` samples side by side (a
  group), groups wrapping row by row with a wider gap between groups, images upscaled
  (nearest) to at least `min_cell` pixels. Returns (uint8 grid, (row, column) of every
  image's cell) so a manifest can say where each sample is."""
  images = np.asarray(images_NxHxWx3)
  n, h, w, c = images.shape
  if per_prompt < 1 or n % per_prompt:
    raise ValueError(f"{n} images are not groups of per_prompt={per_prompt}")
  scale = max(1, -(-min_cell // max(h, w)))
  images = images.repeat(scale, axis=1).repeat(scale, axis=2)
  h, w = h * scale, w * scale
  num_groups = n // per_prompt
  # Width ~ height: groups_per_row * per_prompt * w ~ (num_groups / groups_per_row) * h.
  per_row = max(1, min(num_groups, round(math.sqrt(num_groups * h / (per_prompt * w)))))
  rows = -(-num_groups // per_row)
  group_w = per_prompt * (w + pad) - pad
  grid = np.full((rows * (h + gap) + gap, per_row * (group_w + gap) + gap, c), 255, np.uint8)
  cells = []
  for i in range(n):
    group, k = divmod(i, per_prompt)
    r, g = divmod(group, per_row)
    y = gap + r * (h + gap)
    x = gap + g * (group_w + gap) + k * (w + pad)
    grid[y:y + h, x:x + w] = images[i]
    cells.append((r, g * per_prompt + k))
  return grid, cells
