"""Building blocks of the dVAE family (DALL-E's discrete VAE): residual encoder and decoder.

As in DALL-E (openai/DALL-E `dall_e/encoder.py`, `decoder.py`): groups of residual blocks,
one group per resolution (2x2 max pool between encoder groups, nearest 2x upsampling between
decoder groups); each block's output is `shortcut(x) + post_gain * branch(x)` with
post_gain = 1 / n_layers^2 (n_layers = groups x blocks per group), so the network starts
close to its shortcuts. The encoder's last layer is a 1x1 conv to K logits per grid cell and
the decoder's first a 1x1 conv from the K-way (relaxed) one-hot codes, the receptive field
around the relaxation kept small. The decoder returns 6 channels: the logit-Laplace location
(3, in logit space) and log-scale (3) of each pixel.

Every parameter carries logical axis names (vqgan_layers' table): conv kernels
(None, None, "conv_in", "conv_out"), biases ("conv_out",), the logits conv
(None, None, "conv_in", "codebook"), the decoder's input conv
(None, None, "codebook", "conv_out"), the output head (None, None, "conv_in", None).
"""
from __future__ import annotations

import dataclasses
from typing import Any

from flax import linen as nn
import jax
import jax.numpy as jnp

from upgen.models.vqgan_layers import ACTIVATION_AXES, CHANNEL_AXES, HEAD_KERNEL_AXES, \
    KERNEL_AXES, check_codec_config

LOGITS_KERNEL_AXES = (None, None, "conv_in", "codebook")
CODES_KERNEL_AXES = (None, None, "codebook", "conv_out")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DVAEConfig:
  """The architecture: config.model plus the image size the data fixes (DataSpec)."""
  image_size: int  # From the data: config.data.image_size.
  base_channels: int = 32  # DALL-E's n_hid: channels of the first group.
  channel_multipliers: tuple[int, ...] = (1, 2)  # Per group (resolution); DALL-E (1, 2, 4, 8).
  num_res_blocks: int = 1  # Blocks per group (DALL-E's n_blk_per_group).
  codebook_size: int = 64  # K, DALL-E's vocab_size.
  decoder_init_channels: int = 32  # Width of the decoder's input 1x1 conv (DALL-E's n_init).
  dtype: Any = "float32"
  param_dtype: Any = "float32"

  def __post_init__(self):
    check_codec_config(self, ("base_channels", "num_res_blocks", "codebook_size",
                              "decoder_init_channels"))

  @property
  def grid(self) -> int:
    """Side of the token grid."""
    return self.image_size // 2 ** (len(self.channel_multipliers) - 1)

  @property
  def n_layers(self) -> int:
    """Residual blocks in the encoder (and in the decoder)."""
    return len(self.channel_multipliers) * self.num_res_blocks

  @property
  def post_gain(self) -> float:
    """The residual branches' scale, 1 / n_layers^2."""
    return 1.0 / self.n_layers ** 2


def _conv(cfg: DVAEConfig, features: int, kernel: int, name: str | None = None,
          kernel_axes: tuple = KERNEL_AXES, bias_axes: tuple = CHANNEL_AXES) -> nn.Conv:
  return nn.Conv(
      features, (kernel, kernel), padding="SAME", dtype=cfg.dtype, param_dtype=cfg.param_dtype,
      name=name,
      kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), kernel_axes),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), bias_axes))


def _constrain(x_BxHxWxC: jax.Array) -> jax.Array:
  return nn.with_logical_constraint(x_BxHxWxC, ACTIVATION_AXES)


class ResBlock(nn.Module):
  """shortcut(x) + post_gain * branch(x). The branch is 4 x (relu -> conv) narrowing to
  out_features / 4 inside (DALL-E; at least min(out_features, 4) channels, so a test-sized
  block still splits over a "tensor" mesh axis): kernels 3, 3, 3, 1 in the encoder, 1, 3,
  3, 3 in the decoder; the shortcut is a 1x1 conv where the width changes, else the
  identity."""
  cfg: DVAEConfig
  in_features: int
  out_features: int
  decoder: bool = False

  def setup(self):
    hidden = max(self.out_features // 4, min(self.out_features, 4))
    kernels = (1, 3, 3, 3) if self.decoder else (3, 3, 3, 1)
    widths = (hidden, hidden, hidden, self.out_features)
    self.convs = [_conv(self.cfg, w, k) for w, k in zip(widths, kernels)]
    if self.in_features != self.out_features:
      self.shortcut = _conv(self.cfg, self.out_features, 1)

  def branch(self, x_BxHxWxC: jax.Array) -> jax.Array:
    h = x_BxHxWxC
    for conv in self.convs:
      h = conv(nn.relu(h))
    return h

  def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
    shortcut = self.shortcut(x_BxHxWxC) if self.in_features != self.out_features else x_BxHxWxC
    return _constrain(shortcut + self.cfg.post_gain * self.branch(x_BxHxWxC))


class Encoder(nn.Module):
  """Mapped pixels in [eps, 1 - eps] -> float32 logits over the K codes, B x h x w x K."""
  cfg: DVAEConfig

  @nn.compact
  def __call__(self, x_BxHxWx3: jax.Array) -> jax.Array:
    cfg = self.cfg
    width = cfg.base_channels * cfg.channel_multipliers[0]
    h = _constrain(_conv(cfg, width, 7, name="conv_in")(x_BxHxWx3))
    for group, mult in enumerate(cfg.channel_multipliers):
      for _ in range(cfg.num_res_blocks):
        h = ResBlock(cfg, h.shape[-1], cfg.base_channels * mult)(h)
      if group < len(cfg.channel_multipliers) - 1:
        h = nn.max_pool(h, (2, 2), strides=(2, 2))
    logits = _conv(cfg, cfg.codebook_size, 1, name="logits", kernel_axes=LOGITS_KERNEL_AXES,
                   bias_axes=("codebook",))(nn.relu(h))
    return logits.astype(jnp.float32)


class Decoder(nn.Module):
  """(Relaxed) one-hot codes B x h x w x K -> float32 logit-Laplace statistics B x H x W x 6:
  the location (logit space) in channels :3, the log-scale in 3:."""
  cfg: DVAEConfig

  @nn.compact
  def __call__(self, z_BxhxwxK: jax.Array) -> jax.Array:
    cfg = self.cfg
    h = _constrain(_conv(cfg, cfg.decoder_init_channels, 1, name="conv_in",
                         kernel_axes=CODES_KERNEL_AXES)(z_BxhxwxK))
    for group in reversed(range(len(cfg.channel_multipliers))):
      for _ in range(cfg.num_res_blocks):
        h = ResBlock(cfg, h.shape[-1], cfg.base_channels * cfg.channel_multipliers[group],
                     decoder=True)(h)
      if group > 0:
        b, gh, gw, c = h.shape
        h = jax.image.resize(h, (b, 2 * gh, 2 * gw, c), "nearest")
    stats = _conv(cfg, 6, 1, name="conv_out", kernel_axes=HEAD_KERNEL_AXES,
                  bias_axes=(None,))(nn.relu(h))
    return stats.astype(jnp.float32)
