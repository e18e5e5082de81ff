"""Image tokenizer: a trained VQGAN or dVAE as jitted, batched encode (pixels -> ids) / decode.

  tok = image.load("/tmp/vqgan")          # latest checkpoint of a VQGAN (or dVAE) training run
  ids_Nxhxw = tok.encode(images_NxHxWx3)  # uint8 in, int32 out
  images = tok.decode(ids_Nxhxw)          # uint8 out

Inputs of any length are processed in fixed-size batches (the last one padded), so each
function compiles once.
"""
from __future__ import annotations

import functools
import hashlib
from typing import Any, Callable, Optional, Sequence

from flax import linen as nn
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

from upgen import families
from upgen import paths
from upgen import schema
from upgen.runtime import batching
from upgen.runtime import mesh as mesh_lib
from upgen.runtime import restore
from upgen.tokenizers import recorded


def params_sha256(params: Any) -> str:
  """sha256 over (path, dtype, shape, bytes) of every leaf, in path order."""
  digest = hashlib.sha256()
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  for path, leaf in sorted(leaves, key=lambda kv: jax.tree_util.keystr(kv[0])):
    value = np.asarray(jax.device_get(leaf))
    digest.update(f"{jax.tree_util.keystr(path)}|{value.dtype}|{value.shape}".encode())
    digest.update(np.ascontiguousarray(value).tobytes())
  return digest.hexdigest()


def _local(x: Any) -> Any:
  """This process's copy of a parameter replicated over every process's devices (as
  restore_params gives them in a many-process job): the tokenizer runs on local devices."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    if not x.is_fully_replicated:
      raise ValueError(f"an image tokenizer parameter of shape {x.shape} is split across "
                       "processes; restore it replicated")
    return x.addressable_data(0)
  return x


class ImageTokenizer:
  """A trained image tokenizer family (one whose FAMILY has an image_codec: vqgan, dvae) with
  its params: uint8 images <-> int32 token grids."""

  def __init__(self, setup: families.Setup, params: Any, path: str = "",
               batch_size: int = 64, devices: Optional[Sequence[jax.Device]] = None):
    """`devices` (e.g. jax.local_devices()): each batch is split over them, the parameters
    replicated (batch_size rounded up to a multiple of their number); default: the default
    device."""
    family = setup.family
    codec = family.image_codec
    if codec is None:
      tokenizers = [n for n in families.names() if families.get_family(n).image_codec]
      raise ValueError(f"{path or 'config'}: config.model.family={family.name!r}, "
                       f"an image tokenizer needs a {' or '.join(map(repr, tokenizers))} model")
    missing = [k for k in codec.params_keys if k not in params]
    if missing:
      raise ValueError(f"{path or 'params'}: expected the {family.name} family's params tree "
                       f"with {', '.join(f'a {k!r} entry' for k in codec.params_keys)}, got "
                       f"keys {sorted(params)}")
    if batch_size < 1:
      raise ValueError(f"batch_size={batch_size} must be >= 1")
    self._family = family.name
    self._cfg = setup.model_config  # Has codebook_size, grid, image_size (ImageCodec).
    self._model = setup.model
    self._params = jax.tree.map(_local, {k: nn.meta.unbox(params[k])
                                         for k in codec.params_keys})
    self._path = path
    self._batch_size = batch_size
    self._sharding = None
    if devices is not None and len(devices) > 1:
      mesh = Mesh(np.asarray(devices), ("batch",))
      self._params = jax.device_put(self._params, NamedSharding(mesh, P()))
      self._sharding = NamedSharding(mesh, P("batch"))
      self._batch_size = -(-batch_size // len(devices)) * len(devices)
    self._sha256 = ""
    self._encode = jax.jit(functools.partial(codec.encode, model=self._model))
    self._decode = jax.jit(functools.partial(codec.decode, model=self._model))

  @property
  def codebook_size(self) -> int:
    return self._cfg.codebook_size

  @property
  def image_size(self) -> int:
    return self._cfg.image_size

  @property
  def grid(self) -> tuple[int, int]:
    return self._cfg.grid, self._cfg.grid

  @property
  def path(self) -> str:
    return self._path

  def identity(self) -> dict[str, Any]:
    """What makes token ids comparable: family, model config, params hash, source path."""
    if not self._sha256:
      self._sha256 = params_sha256(self._params)
    config = {k: list(v) if isinstance(v, tuple) else v
              for k, v in schema.to_dict(self._cfg).items() if k not in ("dtype", "param_dtype")}
    return {"family": self._family, "config": config, "sha256": self._sha256, "path": self._path}

  def _batched(self, fn, inputs: np.ndarray) -> np.ndarray:
    """fn over fixed-size batches on the default device, outside any caller's mesh (a
    training loop previewing on a tensor-parallel mesh, say)."""
    with mesh_lib.detached():
      return batching.run_batched(fn, self._params, [inputs], self._batch_size, fixed=True,
                                  sharding=self._sharding)

  def encode(self, images_NxHxWx3: np.ndarray) -> np.ndarray:
    """uint8 images (image_size square, RGB) -> int32 ids N x h x w."""
    images = np.asarray(images_NxHxWx3)
    expected = (self.image_size, self.image_size, 3)
    if images.ndim != 4 or images.shape[1:] != expected or images.dtype != np.uint8:
      raise ValueError(f"encode expects uint8 images of shape (N, {expected[0]}, {expected[1]}, "
                       f"3), got {images.dtype} {images.shape}")
    if images.shape[0] == 0:
      return np.zeros((0,) + self.grid, np.int32)
    return self._batched(self._encode, images).astype(np.int32)

  def decode(self, tokens_Nxhxw: np.ndarray) -> np.ndarray:
    """int ids N x h x w -> uint8 images N x H x W x 3."""
    tokens = np.asarray(tokens_Nxhxw)
    if tokens.ndim != 3 or tokens.shape[1:] != self.grid:
      raise ValueError(f"decode expects ids of shape (N, {self.grid[0]}, {self.grid[1]}), "
                       f"got {tokens.shape}")
    if tokens.size and (tokens.min() < 0 or tokens.max() >= self.codebook_size):
      raise ValueError(f"decode: ids must lie in [0, {self.codebook_size}), got "
                       f"[{tokens.min()}, {tokens.max()}]")
    if tokens.shape[0] == 0:
      return np.zeros((0, self.image_size, self.image_size, 3), np.uint8)
    return self._batched(self._decode, tokens.astype(np.int32))


def load(workdir: str, batch_size: int = 64,
         devices: Optional[Sequence[jax.Device]] = None) -> ImageTokenizer:
  """The image tokenizer of the latest checkpoint of a VQGAN or dVAE training run directory
  (`devices`: see ImageTokenizer)."""
  _, setup, params = restore.restore_params(workdir)
  return ImageTokenizer(setup, params, path=paths.absolute(workdir), batch_size=batch_size,
                        devices=devices)


def load_recorded(data_dir: str, metadata: Optional[dict[str, Any]] = None) -> ImageTokenizer:
  """The image tokenizer data_dir's records were written with, refused (naming both) when
  the run at its path now holds other weights or another model (recorded.load)."""
  return recorded.load(data_dir, "image_tokenizer", load, metadata)


def pixels_fn(data: Any) -> Callable[[np.ndarray], np.ndarray]:
  """Host function turning what a reader's `reference` or a sampler returns for the data of
  config.data `data` into uint8 pixels: uint8 images N x H x W x 3 pass through; image token
  ids (N x Li) are decoded with the image tokenizer the records were written with, loaded on
  first use."""

  @functools.lru_cache(maxsize=1)
  def tokenizer() -> ImageTokenizer:
    return load_recorded(data.dir)

  def to_pixels(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype == np.uint8 and x.ndim == 4:
      return x
    tok = tokenizer()
    return tok.decode(x.reshape((-1,) + tuple(tok.grid)))

  return to_pixels
