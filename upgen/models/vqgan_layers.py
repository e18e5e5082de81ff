"""Building blocks of the VQGAN family: conv encoder/decoder, vector quantizer, discriminator.

The architecture follows MaskGIT's VQGAN (flax linen). Every parameter carries logical axis
names so the same `config.mesh.rules` shard it: conv kernels are
(None, None, "conv_in", "conv_out"), biases and norm scales ("conv_out",), the codebook
("codebook", None); the RGB and logit output convs keep their few channels whole
(None, None, "conv_in", None). Feature maps are constrained to
("batch", None, None, "conv_out").
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

from flax import linen as nn
import jax
import jax.numpy as jnp

from upgen import errors

KERNEL_AXES = (None, None, "conv_in", "conv_out")
HEAD_KERNEL_AXES = (None, None, "conv_in", None)
CHANNEL_AXES = ("conv_out",)
CODEBOOK_AXES = ("codebook", None)
ACTIVATION_AXES = ("batch", None, None, "conv_out")


@dataclasses.dataclass(frozen=True, kw_only=True)
class VQGANConfig:
  """The architecture: config.model plus the image size the data fixes (DataSpec)."""
  image_size: int  # From the data: config.data.image_size.
  base_channels: int = 32
  channel_multipliers: tuple[int, ...] = (1, 2)
  num_res_blocks: int = 1
  codebook_size: int = 64
  embedding_dim: int = 16
  codebook_l2_normalize: bool = False
  conv_downsample: bool = False
  norm: str = "group"
  discriminator: bool = False
  disc_channels: int = 32
  dtype: Any = "float32"
  param_dtype: Any = "float32"

  def __post_init__(self):
    check_codec_config(self, ("base_channels", "codebook_size", "embedding_dim"))
    if self.norm not in ("group", "none"):
      raise errors.ConfigError(f"config.model.norm={self.norm!r}: expected 'group' or 'none'")

  @property
  def grid(self) -> int:
    """Side of the token grid."""
    return self.image_size // 2 ** (len(self.channel_multipliers) - 1)


def check_codec_config(cfg: Any, positive: tuple[str, ...]) -> None:
  """What every image tokenizer's model config (VQGAN, dVAE) checks in __post_init__: dtype
  names become dtypes, one resolution at least, the image divisible down to the grid, and
  the `positive` keys >= 1; a ConfigError naming the key otherwise."""
  object.__setattr__(cfg, "dtype", jnp.dtype(cfg.dtype))
  object.__setattr__(cfg, "param_dtype", jnp.dtype(cfg.param_dtype))
  if not cfg.channel_multipliers:
    raise errors.ConfigError("config.model.channel_multipliers must have at least one entry")
  for key in positive:
    if getattr(cfg, key) < 1:
      raise errors.ConfigError(f"config.model.{key}={getattr(cfg, key)}: must be >= 1")
  factor = 2 ** (len(cfg.channel_multipliers) - 1)
  if cfg.image_size % factor:
    raise errors.ConfigError(
        f"config.data.image_size={cfg.image_size} is not divisible by 2**(len("
        f"config.model.channel_multipliers)-1)={factor}")


def _conv(cfg: VQGANConfig, features: int, kernel: int, stride: int = 1,
          name: str | None = None, zero_init: bool = False, head: bool = False) -> nn.Conv:
  """A SAME conv. `head`: a few output channels (RGB, a logit) that stay whole on every
  device instead of splitting over "conv_out" (3 channels do not split over 2 devices)."""
  init = nn.initializers.zeros_init() if zero_init else nn.initializers.lecun_normal()
  kernel_axes, bias_axes = (HEAD_KERNEL_AXES, (None,)) if head else (KERNEL_AXES, CHANNEL_AXES)
  return nn.Conv(
      features, (kernel, kernel), strides=(stride, stride), padding="SAME",
      dtype=cfg.dtype, param_dtype=cfg.param_dtype, name=name,
      kernel_init=nn.with_logical_partitioning(init, kernel_axes),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), bias_axes))


def _constrain(x_BxHxWxC: jax.Array) -> jax.Array:
  return nn.with_logical_constraint(x_BxHxWxC, ACTIVATION_AXES)


def _norm(cfg: VQGANConfig, x: jax.Array, name: str | None = None) -> jax.Array:
  """GroupNorm (up to 32 groups) or identity, per `cfg.norm`."""
  if cfg.norm == "none":
    return x
  channels = x.shape[-1]
  return nn.GroupNorm(
      num_groups=math.gcd(32, channels), dtype=cfg.dtype, param_dtype=cfg.param_dtype,
      name=name,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), CHANNEL_AXES),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), CHANNEL_AXES))(x)


class ResBlock(nn.Module):
  """(GroupNorm -> swish -> conv3x3) x 2 plus a 1x1 shortcut when channels change.

  The second conv starts at zero, so each block starts as its shortcut: without
  normalization (`norm="none"`) this keeps high learning rates stable.
  """
  cfg: VQGANConfig
  features: int

  @nn.compact
  def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
    h = _conv(self.cfg, self.features, 3)(nn.swish(_norm(self.cfg, x_BxHxWxC)))
    h = _conv(self.cfg, self.features, 3, zero_init=True)(nn.swish(_norm(self.cfg, h)))
    shortcut = x_BxHxWxC
    if x_BxHxWxC.shape[-1] != self.features:
      shortcut = _conv(self.cfg, self.features, 1, name="shortcut")(x_BxHxWxC)
    return _constrain(shortcut + h)


class Encoder(nn.Module):
  """Pixels in [-1, 1] -> continuous embeddings on the token grid."""
  cfg: VQGANConfig

  @nn.compact
  def __call__(self, x_BxHxWx3: jax.Array) -> jax.Array:
    cfg = self.cfg
    h = _conv(cfg, cfg.base_channels * cfg.channel_multipliers[0], 3, name="conv_in")(x_BxHxWx3)
    h = _constrain(h)
    for level, mult in enumerate(cfg.channel_multipliers):
      for _ in range(cfg.num_res_blocks):
        h = ResBlock(cfg, cfg.base_channels * mult)(h)
      if level < len(cfg.channel_multipliers) - 1:
        if cfg.conv_downsample:
          h = _conv(cfg, h.shape[-1], 3, stride=2)(h)
        else:
          h = nn.avg_pool(h, (2, 2), strides=(2, 2))
    h = ResBlock(cfg, h.shape[-1], name="mid")(h)
    h = nn.swish(_norm(cfg, h, name="norm_out"))
    return _conv(cfg, cfg.embedding_dim, 1, name="conv_out")(h)


def output_conv(cfg: VQGANConfig, name: str | None = None) -> nn.Conv:
  """The decoder's last layer, features -> RGB. The loss applies it on its own to take
  gradients w.r.t. its kernel (the adaptive GAN weight)."""
  return _conv(cfg, 3, 3, name=name, head=True)


class Decoder(nn.Module):
  """Quantized embeddings on the grid -> pixels (unbounded; clip to [-1, 1] for images).

  Mirrors the encoder; each nearest-neighbour upsample is followed by a conv that already
  narrows to the next (finer) level's width, so the widest convs run at the coarsest grid.
  With `with_features` it returns (pixels, features_BxHxWxC), the features being the input
  of the last layer (`output_conv`, params "conv_out").
  """
  cfg: VQGANConfig

  @nn.compact
  def __call__(self, z_Bxhxwxd: jax.Array, with_features: bool = False) -> Any:
    cfg = self.cfg
    mults = cfg.channel_multipliers
    h = _constrain(_conv(cfg, cfg.base_channels * mults[-1], 3, name="conv_in")(z_Bxhxwxd))
    h = ResBlock(cfg, h.shape[-1], name="mid")(h)
    for level in reversed(range(len(mults))):
      for _ in range(cfg.num_res_blocks):
        h = ResBlock(cfg, cfg.base_channels * mults[level])(h)
      if level > 0:
        h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)
        h = _constrain(_conv(cfg, cfg.base_channels * mults[level - 1], 3)(h))
    h = nn.swish(_norm(cfg, h, name="norm_out"))
    pixels = output_conv(cfg, name="conv_out")(h).astype(jnp.float32)
    return (pixels, h) if with_features else pixels


def _l2_normalize(x: jax.Array) -> jax.Array:
  return x * jax.lax.rsqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True) + 1e-12)


class VectorQuantizer(nn.Module):
  """Nearest-code lookup with a straight-through estimator.

  Returns (quantized_Bxhxwxd, ids_Bxhxw, stats) with the loss terms the family weights
  (config.loss): stats["codebook"] ||sg(z) - e||^2, stats["commitment"] ||z - sg(e)||^2,
  and stats["revive"], the revival loss ||sg(z_k) - e_k||^2, where z_k is the encoder
  output nearest to code k in the batch: it drags codes that no output chose (dead codes)
  back to the data, at the speed Adam moves every parameter, so a high learning rate cannot
  leave the codebook behind the encoder.
  With `codebook_l2_normalize` both z and the codes live on the unit sphere (ViT-VQGAN).
  """
  cfg: VQGANConfig

  def setup(self):
    cfg = self.cfg
    init = nn.initializers.variance_scaling(1.0, "fan_out", "uniform")
    self.codebook = self.param(
        "codebook", nn.with_logical_partitioning(init, CODEBOOK_AXES),
        (cfg.codebook_size, cfg.embedding_dim), cfg.param_dtype)

  def _codes(self) -> jax.Array:
    codes_Kxd = jnp.asarray(self.codebook, jnp.float32)
    return _l2_normalize(codes_Kxd) if self.cfg.codebook_l2_normalize else codes_Kxd

  def _prepare(self, z: jax.Array) -> jax.Array:
    z = z.astype(jnp.float32)
    return _l2_normalize(z) if self.cfg.codebook_l2_normalize else z

  @staticmethod
  def _distances(z_Nxd: jax.Array, codes_Kxd: jax.Array) -> jax.Array:
    return (jnp.sum(jnp.square(z_Nxd), -1, keepdims=True) - 2 * z_Nxd @ codes_Kxd.T
            + jnp.sum(jnp.square(codes_Kxd), -1))

  def lookup(self, ids_Bxhxw: jax.Array) -> jax.Array:
    """Code vectors of the given ids."""
    return jnp.take(self._codes(), ids_Bxhxw, axis=0)

  def nearest(self, z_Bxhxwxd: jax.Array) -> jax.Array:
    """Ids of the nearest codes (L2)."""
    z = self._prepare(z_Bxhxwxd)
    dist_NxK = self._distances(z.reshape(-1, z.shape[-1]), self._codes())
    return jnp.argmin(dist_NxK, axis=-1).astype(jnp.int32).reshape(z.shape[:-1])

  def __call__(self, z_Bxhxwxd: jax.Array) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    z = self._prepare(z_Bxhxwxd)
    codes_Kxd = self._codes()
    z_Nxd = jax.lax.stop_gradient(z.reshape(-1, z.shape[-1]))
    dist_NxK = self._distances(z_Nxd, jax.lax.stop_gradient(codes_Kxd))
    ids_N = jnp.argmin(dist_NxK, axis=-1).astype(jnp.int32)
    ids_Bxhxw = ids_N.reshape(z.shape[:-1])
    e = jnp.take(codes_Kxd, ids_Bxhxw, axis=0)
    codebook_loss = jnp.mean(jnp.square(jax.lax.stop_gradient(z) - e))
    commitment_loss = jnp.mean(jnp.square(z - jax.lax.stop_gradient(e)))
    anchors_Kxd = jnp.take(z_Nxd, jnp.argmin(dist_NxK, axis=0), axis=0)
    revive_loss = jnp.mean(jnp.square(anchors_Kxd - codes_Kxd))
    quantized = z + jax.lax.stop_gradient(e - z)
    counts_K = jnp.zeros((self.cfg.codebook_size,), jnp.float32).at[ids_N].add(1.0)
    return quantized, ids_Bxhxw, {"codebook": codebook_loss, "commitment": commitment_loss,
                                  "revive": revive_loss, "code_counts": counts_K}


class Discriminator(nn.Module):
  """PatchGAN-style conv discriminator: one real/fake logit per patch (no batch norm)."""
  cfg: VQGANConfig

  @nn.compact
  def __call__(self, x_BxHxWx3: jax.Array) -> jax.Array:
    cfg = self.cfg
    h = nn.leaky_relu(_conv(cfg, cfg.disc_channels, 4, stride=2)(x_BxHxWx3), 0.2)
    h = _conv(cfg, cfg.disc_channels * 2, 4, stride=2)(h)
    h = nn.leaky_relu(_norm(cfg, h), 0.2)
    h = _conv(cfg, cfg.disc_channels * 4, 3)(h)
    h = nn.leaky_relu(_norm(cfg, h), 0.2)
    return _conv(cfg, 1, 3, name="logits", head=True)(h)[..., 0].astype(jnp.float32)


def conv_flops(size: int, k: int, cin: int, cout: int, stride: int = 1) -> float:
  """Multiply-adds x 2 of one SAME conv on a size x size input."""
  out = size // stride
  return 2.0 * out * out * k * k * cin * cout


def _res_flops(size: int, cin: int, cout: int) -> float:
  flops = conv_flops(size, 3, cin, cout) + conv_flops(size, 3, cout, cout)
  return flops + (conv_flops(size, 1, cin, cout) if cin != cout else 0.0)


def autoencoder_flops(cfg: VQGANConfig) -> float:
  """Forward FLOPs of encoder + quantizer + decoder for one image (convs and distances)."""
  mults: Sequence[int] = cfg.channel_multipliers
  size, ch = cfg.image_size, cfg.base_channels * mults[0]
  enc = conv_flops(size, 3, 3, ch)
  for level, mult in enumerate(mults):
    for _ in range(cfg.num_res_blocks):
      enc += _res_flops(size, ch, cfg.base_channels * mult)
      ch = cfg.base_channels * mult
    if level < len(mults) - 1:
      enc += conv_flops(size, 3, ch, ch, 2) if cfg.conv_downsample else 0.0
      size //= 2
  enc += _res_flops(size, ch, ch) + conv_flops(size, 1, ch, cfg.embedding_dim)
  vq = 2.0 * size * size * cfg.codebook_size * cfg.embedding_dim
  ch = cfg.base_channels * mults[-1]
  dec = conv_flops(size, 3, cfg.embedding_dim, ch) + _res_flops(size, ch, ch)
  for level in reversed(range(len(mults))):
    for _ in range(cfg.num_res_blocks):
      dec += _res_flops(size, ch, cfg.base_channels * mults[level])
      ch = cfg.base_channels * mults[level]
    if level > 0:
      size *= 2
      dec += conv_flops(size, 3, ch, cfg.base_channels * mults[level - 1])
      ch = cfg.base_channels * mults[level - 1]
  dec += conv_flops(size, 3, ch, 3)
  return enc + vq + dec
