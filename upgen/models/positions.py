"""Fixed sinusoidal position tables: one axis (a caption, a raster sequence) or a raster-order
image grid (half the channels code rows, half columns). Numpy, built once per model."""
from __future__ import annotations

import numpy as np


def sinusoidal_1d(length: int, dim: int, max_period: float = 10_000.0) -> np.ndarray:
  """Fixed position table LxD: [sin(p w_i), cos(p w_i)] with geometric frequencies w_i."""
  if dim % 2:
    raise ValueError(f"sinusoidal position embedding needs an even width, got {dim}")
  half = dim // 2
  freqs_D2 = np.exp(-np.log(max_period) * np.arange(half) / half)
  angles_LxD2 = np.arange(length)[:, None] * freqs_D2[None, :]
  return np.concatenate([np.sin(angles_LxD2), np.cos(angles_LxD2)], axis=1).astype(np.float32)


def sinusoidal_2d(height: int, width: int, dim: int) -> np.ndarray:
  """Fixed table (H*W)xD for a raster-order grid: half the channels code rows, half columns."""
  if dim % 4:
    raise ValueError(f"2D sinusoidal position embedding needs a width divisible by 4, got {dim}")
  rows_HxD2 = sinusoidal_1d(height, dim // 2)
  cols_WxD2 = sinusoidal_1d(width, dim // 2)
  rows_HWxD2 = np.repeat(rows_HxD2, width, axis=0)
  cols_HWxD2 = np.tile(cols_WxD2, (height, 1))
  return np.concatenate([rows_HWxD2, cols_HWxD2], axis=1)
