"""Inception-v3 as FID computes it (pytorch-fid's network), in JAX: 2048-d pool features.

  upgen eval fid --real DIR --fake DIR_OR_MANIFEST --features inception:pt_inception.safetensors

pytorch-fid's variant of the network (the TensorFlow FID graph's), not torchvision's:
- inputs in [0, 1], resized to 299 x 299 bilinearly with half-pixel centres and no
  antialiasing (`F.interpolate(mode="bilinear", align_corners=False)`), then scaled to
  [-1, 1];
- every convolution without bias, then batch norm (eval statistics, epsilon 1e-3), then ReLU;
- the average pools inside blocks 5b-5d, 6b-6e and 7b exclude the padding from their
  counts (`count_include_pad=False`), and block 7c's pool branch is a 3 x 3 max pool;
- features: the mean over positions after block 7c (2048 values), before the classifier.

Weights: a safetensors file with pytorch-fid's state-dict names (`Conv2d_1a_3x3.conv.weight`,
`Mixed_5b.branch1x1.bn.running_mean`, ...; PyTorch layouts), which scripts/convert_inception.py
writes from pytorch-fid's published checkpoint (pt_inception-2015-12-05-6726825d.pth). Nothing
is downloaded; without such a file, FID in this repository uses a CLIP scorer's features.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from safetensors.numpy import load_file
from safetensors.numpy import save_file

from upgen import errors

BN_EPS = 1e-3
SIZE = 299
FEATURES = 2048

# Every BasicConv2d (convolution + batch norm) of the network up to block 7c, with its
# (stride, (padding H, padding W)); the kernel sizes and channels come from the weights.
_A = {"branch1x1": (1, (0, 0)), "branch5x5_1": (1, (0, 0)), "branch5x5_2": (1, (2, 2)),
      "branch3x3dbl_1": (1, (0, 0)), "branch3x3dbl_2": (1, (1, 1)),
      "branch3x3dbl_3": (1, (1, 1)), "branch_pool": (1, (0, 0))}
_B = {"branch3x3": (2, (0, 0)), "branch3x3dbl_1": (1, (0, 0)), "branch3x3dbl_2": (1, (1, 1)),
      "branch3x3dbl_3": (2, (0, 0))}
_C = {"branch1x1": (1, (0, 0)), "branch7x7_1": (1, (0, 0)), "branch7x7_2": (1, (0, 3)),
      "branch7x7_3": (1, (3, 0)), "branch7x7dbl_1": (1, (0, 0)), "branch7x7dbl_2": (1, (3, 0)),
      "branch7x7dbl_3": (1, (0, 3)), "branch7x7dbl_4": (1, (3, 0)),
      "branch7x7dbl_5": (1, (0, 3)), "branch_pool": (1, (0, 0))}
_D = {"branch3x3_1": (1, (0, 0)), "branch3x3_2": (2, (0, 0)), "branch7x7x3_1": (1, (0, 0)),
      "branch7x7x3_2": (1, (0, 3)), "branch7x7x3_3": (1, (3, 0)), "branch7x7x3_4": (2, (0, 0))}
_E = {"branch1x1": (1, (0, 0)), "branch3x3_1": (1, (0, 0)), "branch3x3_2a": (1, (0, 1)),
      "branch3x3_2b": (1, (1, 0)), "branch3x3dbl_1": (1, (0, 0)), "branch3x3dbl_2": (1, (1, 1)),
      "branch3x3dbl_3a": (1, (0, 1)), "branch3x3dbl_3b": (1, (1, 0)),
      "branch_pool": (1, (0, 0))}
STEM = {"Conv2d_1a_3x3": (2, (0, 0)), "Conv2d_2a_3x3": (1, (0, 0)),
        "Conv2d_2b_3x3": (1, (1, 1)), "Conv2d_3b_1x1": (1, (0, 0)),
        "Conv2d_4a_3x3": (1, (0, 0))}
BLOCKS = (("Mixed_5b", _A), ("Mixed_5c", _A), ("Mixed_5d", _A), ("Mixed_6a", _B),
          ("Mixed_6b", _C), ("Mixed_6c", _C), ("Mixed_6d", _C), ("Mixed_6e", _C),
          ("Mixed_7a", _D), ("Mixed_7b", _E), ("Mixed_7c", _E))
CONVS = {**STEM, **{f"{block}.{name}": spec for block, table in BLOCKS
                    for name, spec in table.items()}}
BN_PARTS = ("weight", "bias", "running_mean", "running_var")


def conv_shapes() -> dict[str, tuple[int, int, int, int]]:
  """Every convolution's kernel shape in PyTorch's layout (out, in, kh, kw)."""
  shapes = {"Conv2d_1a_3x3": (32, 3, 3, 3), "Conv2d_2a_3x3": (32, 32, 3, 3),
            "Conv2d_2b_3x3": (64, 32, 3, 3), "Conv2d_3b_1x1": (80, 64, 1, 1),
            "Conv2d_4a_3x3": (192, 80, 3, 3)}
  for block, c_in, pool in (("Mixed_5b", 192, 32), ("Mixed_5c", 256, 64),
                            ("Mixed_5d", 288, 64)):
    shapes.update({f"{block}.branch1x1": (64, c_in, 1, 1),
                   f"{block}.branch5x5_1": (48, c_in, 1, 1),
                   f"{block}.branch5x5_2": (64, 48, 5, 5),
                   f"{block}.branch3x3dbl_1": (64, c_in, 1, 1),
                   f"{block}.branch3x3dbl_2": (96, 64, 3, 3),
                   f"{block}.branch3x3dbl_3": (96, 96, 3, 3),
                   f"{block}.branch_pool": (pool, c_in, 1, 1)})
  shapes.update({"Mixed_6a.branch3x3": (384, 288, 3, 3),
                 "Mixed_6a.branch3x3dbl_1": (64, 288, 1, 1),
                 "Mixed_6a.branch3x3dbl_2": (96, 64, 3, 3),
                 "Mixed_6a.branch3x3dbl_3": (96, 96, 3, 3)})
  for block, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
    shapes.update({f"{block}.branch1x1": (192, 768, 1, 1),
                   f"{block}.branch7x7_1": (c7, 768, 1, 1),
                   f"{block}.branch7x7_2": (c7, c7, 1, 7),
                   f"{block}.branch7x7_3": (192, c7, 7, 1),
                   f"{block}.branch7x7dbl_1": (c7, 768, 1, 1),
                   f"{block}.branch7x7dbl_2": (c7, c7, 7, 1),
                   f"{block}.branch7x7dbl_3": (c7, c7, 1, 7),
                   f"{block}.branch7x7dbl_4": (c7, c7, 7, 1),
                   f"{block}.branch7x7dbl_5": (192, c7, 1, 7),
                   f"{block}.branch_pool": (192, 768, 1, 1)})
  shapes.update({"Mixed_7a.branch3x3_1": (192, 768, 1, 1),
                 "Mixed_7a.branch3x3_2": (320, 192, 3, 3),
                 "Mixed_7a.branch7x7x3_1": (192, 768, 1, 1),
                 "Mixed_7a.branch7x7x3_2": (192, 192, 1, 7),
                 "Mixed_7a.branch7x7x3_3": (192, 192, 7, 1),
                 "Mixed_7a.branch7x7x3_4": (192, 192, 3, 3)})
  for block, c_in in (("Mixed_7b", 1280), ("Mixed_7c", 2048)):
    shapes.update({f"{block}.branch1x1": (320, c_in, 1, 1),
                   f"{block}.branch3x3_1": (384, c_in, 1, 1),
                   f"{block}.branch3x3_2a": (384, 384, 1, 3),
                   f"{block}.branch3x3_2b": (384, 384, 3, 1),
                   f"{block}.branch3x3dbl_1": (448, c_in, 1, 1),
                   f"{block}.branch3x3dbl_2": (384, 448, 3, 3),
                   f"{block}.branch3x3dbl_3a": (384, 384, 1, 3),
                   f"{block}.branch3x3dbl_3b": (384, 384, 3, 1),
                   f"{block}.branch_pool": (192, c_in, 1, 1)})
  return shapes


def tensor_shapes() -> dict[str, tuple[int, ...]]:
  """Every tensor a weights file holds (pytorch-fid's names), with its shape."""
  out = {}
  for conv, shape in conv_shapes().items():
    out[f"{conv}.conv.weight"] = shape
    out.update({f"{conv}.bn.{p}": (shape[0],) for p in BN_PARTS})
  return out


def load(path: str) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """pytorch-fid Inception weights from safetensors, every tensor checked by name and shape,
  as {conv: (HWIO kernel, scale, shift)}, the batch norm folded into a scale and a shift."""
  try:
    tensors = load_file(path)
  except Exception as e:  # pylint: disable=broad-except
    raise errors.DataError(f"{path}: cannot read Inception weights as safetensors: {e}") from e
  for key, shape in tensor_shapes().items():
    if key not in tensors:
      raise errors.DataError(f"{path}: no tensor {key!r} (a pytorch-fid Inception file has "
                             f"{len(tensor_shapes())}; scripts/convert_inception.py writes one)")
    if tuple(tensors[key].shape) != shape:
      raise errors.DataError(f"{path}: {key} has shape {tuple(tensors[key].shape)}, "
                             f"pytorch-fid's Inception-v3 needs {shape}")
  params = {}
  for conv in CONVS:
    w = np.asarray(tensors[f"{conv}.conv.weight"], np.float32)
    bn = {p: np.asarray(tensors[f"{conv}.bn.{p}"], np.float64) for p in BN_PARTS}
    scale = bn["weight"] / np.sqrt(bn["running_var"] + BN_EPS)
    params[conv] = (w.transpose(2, 3, 1, 0), scale.astype(np.float32),
                    (bn["bias"] - bn["running_mean"] * scale).astype(np.float32))
  return params


def save(tensors: dict, path: str) -> None:
  """Writes the tensors `load` reads (pytorch-fid's names and layouts; others dropped)."""
  missing = [k for k in tensor_shapes() if k not in tensors]
  if missing:
    raise ValueError(f"Inception tensors missing: {missing[:4]}"
                     f"{' ...' if len(missing) > 4 else ''}")
  save_file({k: np.ascontiguousarray(np.asarray(tensors[k], np.float32))
             for k in tensor_shapes()}, path)


def _conv(params, name: str, x_NxHxWxC: jax.Array) -> jax.Array:
  kernel, scale, shift = params[name]
  stride, (ph, pw) = CONVS[name]
  y = jax.lax.conv_general_dilated(x_NxHxWxC, kernel, (stride, stride), ((ph, ph), (pw, pw)),
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return jax.nn.relu(y * scale + shift)


def max_pool(x_NxHxWxC: jax.Array, stride: int, pad: int = 0) -> jax.Array:
  pads = ((0, 0), (pad, pad), (pad, pad), (0, 0))
  return jax.lax.reduce_window(x_NxHxWxC, -jnp.inf, jax.lax.max, (1, 3, 3, 1),
                               (1, stride, stride, 1), pads)


def avg_pool_exclude_pad(x_NxHxWxC: jax.Array) -> jax.Array:
  """3 x 3, stride 1, padding 1, each mean over the in-image positions only."""
  pads = ((0, 0), (1, 1), (1, 1), (0, 0))
  window = lambda a: jax.lax.reduce_window(a, 0.0, jax.lax.add, (1, 3, 3, 1), (1, 1, 1, 1), pads)
  counts = window(jnp.ones((1,) + x_NxHxWxC.shape[1:3] + (1,), x_NxHxWxC.dtype))
  return window(x_NxHxWxC) / counts


def _block(params, block: str, x: jax.Array) -> jax.Array:
  c = lambda name, h: _conv(params, f"{block}.{name}", h)
  if block in ("Mixed_5b", "Mixed_5c", "Mixed_5d"):
    b5 = c("branch5x5_2", c("branch5x5_1", x))
    b3 = c("branch3x3dbl_3", c("branch3x3dbl_2", c("branch3x3dbl_1", x)))
    return jnp.concatenate([c("branch1x1", x), b5, b3,
                            c("branch_pool", avg_pool_exclude_pad(x))], -1)
  if block == "Mixed_6a":
    b3 = c("branch3x3dbl_3", c("branch3x3dbl_2", c("branch3x3dbl_1", x)))
    return jnp.concatenate([c("branch3x3", x), b3, max_pool(x, 2)], -1)
  if block.startswith("Mixed_6"):
    b7 = c("branch7x7_3", c("branch7x7_2", c("branch7x7_1", x)))
    bd = x
    for i in range(1, 6):
      bd = c(f"branch7x7dbl_{i}", bd)
    return jnp.concatenate([c("branch1x1", x), b7, bd,
                            c("branch_pool", avg_pool_exclude_pad(x))], -1)
  if block == "Mixed_7a":
    b3 = c("branch3x3_2", c("branch3x3_1", x))
    b7 = x
    for i in range(1, 5):
      b7 = c(f"branch7x7x3_{i}", b7)
    return jnp.concatenate([b3, b7, max_pool(x, 2)], -1)
  b3 = c("branch3x3_1", x)
  b3 = jnp.concatenate([c("branch3x3_2a", b3), c("branch3x3_2b", b3)], -1)
  bd = c("branch3x3dbl_2", c("branch3x3dbl_1", x))
  bd = jnp.concatenate([c("branch3x3dbl_3a", bd), c("branch3x3dbl_3b", bd)], -1)
  pool = avg_pool_exclude_pad(x) if block == "Mixed_7b" else max_pool(x, 1, 1)
  return jnp.concatenate([c("branch1x1", x), b3, bd, c("branch_pool", pool)], -1)


def resize(x_NxHxWxC: jax.Array, size: int = SIZE) -> jax.Array:
  """Bilinear, half-pixel centres, no antialiasing (PyTorch's align_corners=False)."""
  n, _, _, c = x_NxHxWxC.shape
  return jax.image.resize(x_NxHxWxC, (n, size, size, c), "bilinear", antialias=False)


def pool_features(params, images_NxHxWx3: jax.Array) -> jax.Array:
  """N x 2048 features of images in [0, 1] (any size; resized to 299)."""
  x = resize(jnp.asarray(images_NxHxWx3, jnp.float32)) * 2.0 - 1.0
  for name in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3"):
    x = _conv(params, name, x)
  x = max_pool(x, 2)
  x = _conv(params, "Conv2d_4a_3x3", _conv(params, "Conv2d_3b_1x1", x))
  x = max_pool(x, 2)
  for block, _ in BLOCKS:
    x = _block(params, block, x)
  return jnp.mean(x, axis=(1, 2))


def feature_fn(path: str) -> Callable[[np.ndarray], np.ndarray]:
  """uint8 images N x H x W x 3 -> N x 2048 float64 features, in batches of 50."""
  params = load(path)
  forward = jax.jit(pool_features)

  def features(images_NxHxWx3: np.ndarray) -> np.ndarray:
    out = [np.asarray(forward(params, np.asarray(images_NxHxWx3[i:i + 50], np.float32) / 255.0))
           for i in range(0, len(images_NxHxWx3), 50)]
    return np.concatenate(out).astype(np.float64) if out else np.zeros((0, FEATURES))

  return features
