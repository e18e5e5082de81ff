"""Image metrics for reconstructions: PSNR, SSIM and LPIPS, per image (`upgen eval recon`,
evaluators/recon.py, scores an image tokenizer with them).

- `psnr`: 10 log10(R^2 / MSE) per image, R the data range (255 for uint8).
- `ssim`: Wang et al.'s SSIM as scikit-image computes it with `gaussian_weights=True,
  use_sample_covariance=False, data_range=R, channel_axis=-1`: an 11-tap Gaussian window
  (sigma 1.5, truncated at 3.5 sigma), K1 = 0.01, K2 = 0.03, the map averaged over the
  positions whose window lies inside the image, then over channels. Statistics are taken
  around each image's mean (covariances do not change), so float32 keeps them exact to
  about 1e-6.
- `lpips`: the LPIPS distance (Zhang et al. 2018, version 0.1) with VGG16 features: inputs in
  [-1, 1], the scaling layer, relu1_2 / relu2_2 / relu3_3 / relu4_3 / relu5_3 features each
  unit-normalised over channels, squared differences weighted by the linear heads and
  averaged over positions, summed over the five layers. Weights come from a safetensors file
  with the `lpips` package's state-dict names (`net.slice1.0.weight`, ..., `lin0.model.1.weight`,
  PyTorch layouts); scripts/convert_lpips.py writes one from the package's checkpoints.

The VQGAN logs `psnr` and `ssim` on its training and validation batches.
"""
from __future__ import annotations

import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from safetensors.numpy import load_file
from safetensors.numpy import save_file

from upgen import errors

SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5  # scipy.ndimage's default: 11 taps at sigma 1.5.
SSIM_K1, SSIM_K2 = 0.01, 0.03


def psnr(x_BxHxWxC, y_BxHxWxC, data_range: float = 255.0) -> jax.Array:
  """PSNR in dB per image."""
  diff = jnp.asarray(x_BxHxWxC, jnp.float32) - jnp.asarray(y_BxHxWxC, jnp.float32)
  mse_B = jnp.mean(jnp.square(diff), axis=tuple(range(1, diff.ndim)))
  return 10.0 * jnp.log10(data_range ** 2 / jnp.maximum(mse_B, 1e-10 * data_range ** 2))


def gaussian_taps(sigma: float = SSIM_SIGMA, truncate: float = SSIM_TRUNCATE) -> np.ndarray:
  """scipy.ndimage.gaussian_filter1d's weights: radius int(truncate sigma + 0.5)."""
  radius = int(truncate * sigma + 0.5)
  x = np.arange(-radius, radius + 1, dtype=np.float64)
  w = np.exp(-0.5 * (x / sigma) ** 2)
  return w / w.sum()


def _filter_valid(a_BxHxWxC: jax.Array, taps: np.ndarray) -> jax.Array:
  """Separable correlation with `taps` along H and W, valid positions only."""
  k = len(taps)
  h, w = a_BxHxWxC.shape[1:3]
  rows = sum(float(t) * a_BxHxWxC[:, i:h - k + 1 + i] for i, t in enumerate(taps))
  return sum(float(t) * rows[:, :, i:w - k + 1 + i] for i, t in enumerate(taps))


def ssim(x_BxHxWxC, y_BxHxWxC, data_range: float = 255.0) -> jax.Array:
  """SSIM per image (see the module docstring for the exact variant)."""
  taps = gaussian_taps()
  if min(np.shape(x_BxHxWxC)[1:3]) < len(taps):
    raise ValueError(f"SSIM needs images of at least {len(taps)} x {len(taps)} pixels, got "
                     f"{np.shape(x_BxHxWxC)[1:3]}")
  x = jnp.asarray(x_BxHxWxC, jnp.float32) / data_range
  y = jnp.asarray(y_BxHxWxC, jnp.float32) / data_range
  mean_x = jnp.mean(x, axis=(1, 2), keepdims=True)
  mean_y = jnp.mean(y, axis=(1, 2), keepdims=True)
  xc, yc = x - mean_x, y - mean_y
  f = lambda a: _filter_valid(a, taps)
  ux_c, uy_c = f(xc), f(yc)
  var_x = f(xc * xc) - ux_c * ux_c
  var_y = f(yc * yc) - uy_c * uy_c
  cov = f(xc * yc) - ux_c * uy_c
  ux, uy = ux_c + mean_x, uy_c + mean_y
  c1, c2 = SSIM_K1 ** 2, SSIM_K2 ** 2  # data_range is 1 after the scaling above.
  s = ((2 * ux * uy + c1) * (2 * cov + c2)) / ((ux * ux + uy * uy + c1) * (var_x + var_y + c2))
  return jnp.mean(s, axis=(1, 2, 3))


# VGG16's convolutions (torchvision `features` indices) and the five LPIPS taps after them.
VGG16_CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
LPIPS_SLICES = ((1, (0, 2)), (2, (5, 7)), (3, (10, 12, 14)), (4, (17, 19, 21)),
                (5, (24, 26, 28)))
LPIPS_CHANNELS = (64, 128, 256, 512, 512)


def lpips_keys() -> dict[str, tuple[int, ...]]:
  """Every tensor an LPIPS-VGG safetensors file holds, with its PyTorch shape."""
  keys = {"scaling_layer.shift": (1, 3, 1, 1), "scaling_layer.scale": (1, 3, 1, 1)}
  c_in = 3
  for s, convs in LPIPS_SLICES:
    for i in convs:
      c_out = LPIPS_CHANNELS[s - 1]
      keys[f"net.slice{s}.{i}.weight"] = (c_out, c_in, 3, 3)
      keys[f"net.slice{s}.{i}.bias"] = (c_out,)
      c_in = c_out
  for layer, c in enumerate(LPIPS_CHANNELS):
    keys[f"lin{layer}.model.1.weight"] = (1, c, 1, 1)
  return keys


def load_lpips(path: str) -> dict[str, np.ndarray]:
  """An LPIPS-VGG weights file, checked key by key, converted to JAX layouts (HWIO)."""
  if not os.path.isfile(path):
    raise errors.NotFound(f"{path}: no such LPIPS weights file (scripts/convert_lpips.py "
                          "writes one)")
  try:
    tensors = load_file(path)
  except Exception as e:  # pylint: disable=broad-except
    raise errors.DataError(f"{path}: cannot read LPIPS weights as safetensors: {e}") from e
  params = {}
  for key, shape in lpips_keys().items():
    if key not in tensors:
      raise errors.DataError(f"{path}: no tensor {key!r} (an LPIPS-VGG file has "
                             f"{len(lpips_keys())}; scripts/convert_lpips.py writes one)")
    if tuple(tensors[key].shape) != shape:
      raise errors.DataError(f"{path}: {key} has shape {tuple(tensors[key].shape)}, "
                             f"LPIPS-VGG needs {shape}")
    t = np.asarray(tensors[key], np.float32)
    params[key] = t.transpose(2, 3, 1, 0) if t.ndim == 4 else t  # OIHW -> HWIO.
  return params


def save_lpips(tensors: dict[str, np.ndarray], path: str) -> None:
  """Writes the LPIPS-VGG tensors (PyTorch names and layouts) that `load_lpips` reads."""
  missing = sorted(set(lpips_keys()) - set(tensors))
  if missing:
    raise ValueError(f"LPIPS-VGG tensors missing: {missing[:4]}{' ...' if len(missing) > 4 else ''}")
  save_file({k: np.ascontiguousarray(np.asarray(tensors[k], np.float32)) for k in lpips_keys()},
            path)


def _conv(x_NxHxWxC, kernel_HWIO, bias=None):
  y = jax.lax.conv_general_dilated(x_NxHxWxC, kernel_HWIO, (1, 1), "SAME",
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return y if bias is None else y + bias


def lpips_features(params: dict, x_NxHxWx3: jax.Array) -> list[jax.Array]:
  """The five unit-normalised VGG16 feature maps of images in [-1, 1]."""
  shift = params["scaling_layer.shift"].reshape(3)
  scale = params["scaling_layer.scale"].reshape(3)
  h = (jnp.asarray(x_NxHxWx3, jnp.float32) - shift) / scale
  feats = []
  for s, convs in LPIPS_SLICES:
    if s > 1:  # Each slice after the first starts with a 2 x 2 max pool (stride 2).
      h = jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    for i in convs:
      h = jax.nn.relu(_conv(h, params[f"net.slice{s}.{i}.weight"],
                            params[f"net.slice{s}.{i}.bias"]))
    norm = jnp.sqrt(jnp.sum(h * h, axis=-1, keepdims=True))
    feats.append(h / (norm + 1e-10))
  return feats


def lpips(params: dict, x_NxHxWx3, y_NxHxWx3) -> jax.Array:
  """LPIPS distance per image pair, images in [-1, 1]."""
  total = 0.0
  for layer, (fx, fy) in enumerate(zip(lpips_features(params, x_NxHxWx3),
                                       lpips_features(params, y_NxHxWx3))):
    weighted = _conv(jnp.square(fx - fy), params[f"lin{layer}.model.1.weight"])
    total = total + jnp.mean(weighted, axis=(1, 2, 3))
  return total


def reconstruction_metrics(images_BxHxWx3: np.ndarray, recon_BxHxWx3: np.ndarray,
                           lpips_params: Optional[dict] = None, batch_size: int = 64
                           ) -> dict[str, Any]:
  """Means over uint8 image pairs: psnr, ssim, and lpips where weights are given."""
  metric_fns = {"psnr": jax.jit(psnr), "ssim": jax.jit(ssim)}
  if lpips_params is not None:
    unit = lambda a: jnp.asarray(a, jnp.float32) / 127.5 - 1.0
    metric_fns["lpips"] = jax.jit(lambda a, b: lpips(lpips_params, unit(a), unit(b)))
  values: dict[str, list[np.ndarray]] = {k: [] for k in metric_fns}
  for i in range(0, len(images_BxHxWx3), batch_size):
    a, b = images_BxHxWx3[i:i + batch_size], recon_BxHxWx3[i:i + batch_size]
    for k, fn in metric_fns.items():
      values[k].append(np.asarray(fn(a, b)))
  out: dict[str, Any] = {k: float(np.mean(np.concatenate(v))) for k, v in values.items()}
  if lpips_params is None:
    out["lpips"] = "not computed (no VGG weights: --lpips FILE, see scripts/convert_lpips.py)"
  return out
