"""GLIDE's text-conditional ADM UNet in Flax (the network of upgen/models/glide.py).

The layout follows the released GLIDE base model (glide-text2im's Text2ImUNet over
guided-diffusion's UNetModel), so a released checkpoint maps onto it by name:

- timestep embedding: sinusoidal (cos | sin halves, period 10000) of the float timestep over
  `model_channels`, then Dense(4 mc) -> SiLU -> Dense(4 mc).
- text: token embedding + learned positions over `text_ctx` positions; positions past the
  caption hold a learned per-position padding embedding instead; an unmasked pre-LN
  transformer (gelu, LayerNorm eps 1e-5), a final LayerNorm. Its last position's output,
  projected to 4 mc, is added to the timestep embedding; every position's output is projected
  to keys and values (per head) that are prepended to each attention block's own.
- UNet: a 3x3 conv to mc x mult[0]; per level `num_res_blocks` residual blocks (with
  attention where the resolution is in `attention_resolutions`), then a downsample (a
  stride-2 conv, or a residual block that average-pools when `resblock_updown`); a middle
  residual / attention / residual; the way up with `num_res_blocks + 1` blocks per level over
  the skip connections, upsampling by nearest neighbour (+ 3x3 conv, or inside a residual
  block); GroupNorm -> SiLU -> a zero-initialized 3x3 conv to 3 channels (epsilon) or 6
  (epsilon and the learned-range variance value).
- residual block: GroupNorm -> SiLU -> 3x3 conv; the timestep embedding projected to a
  scale and shift of the second GroupNorm (`use_scale_shift_norm`) or added; SiLU ->
  dropout -> zero-initialized 3x3 conv; a 1x1 conv on the skip where the width changes.
- attention block: GroupNorm -> one projection to per-head (q, k, v) (guided-diffusion's
  legacy channel order: head-major, then q | k | v) -> softmax(q k / sqrt(d)) v over the
  text's keys followed by the image's -> a zero-initialized output projection, residual.
- GroupNorm: `norm_groups` groups, epsilon 1e-5, computed in float32 (GroupNorm32).
- `patch_size` p > 1 (not in ADM; the CPU recipe's): the image's p x p patches are folded
  into channels before the first conv and the output unfolded after the last, so the UNet
  runs at 1/p of the resolution (p^2 fewer FLOPs in every conv).

Parameters carry the VQGAN's logical axis names (conv kernels (None, None, "conv_in",
"conv_out"); the 3- or 6-channel output conv keeps its channels whole), the text transformer
the token families' ("vocab", "embed", "mlp", "heads").
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

from flax import linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from upgen import errors
from upgen.models import layers
from upgen.models.vqgan_layers import ACTIVATION_AXES
from upgen.models.vqgan_layers import CHANNEL_AXES
from upgen.models.vqgan_layers import HEAD_KERNEL_AXES
from upgen.models.vqgan_layers import KERNEL_AXES

DENSE_AXES = ("conv_in", "conv_out")


@dataclasses.dataclass(frozen=True, kw_only=True)
class UNetConfig:
  """The architecture (config.model), plus the sizes the data fixes."""
  image_size: int
  text_vocab_size: int
  text_seq_len: int
  text_pad_id: int = 0
  model_channels: int = 64
  channel_mult: tuple[int, ...] = (1, 2, 2)
  num_res_blocks: int = 2
  # Feature-map sides with attention blocks (the image's, over patch_size and 2 per level).
  attention_resolutions: tuple[int, ...] = (16, 8)
  num_head_channels: int = 32
  norm_groups: int = 32
  dropout: float = 0.0
  use_scale_shift_norm: bool = True
  resblock_updown: bool = False
  learn_sigma: bool = True  # 6 output channels: epsilon and the variance value.
  prediction: str = "epsilon"  # What the first 3 channels predict: "epsilon" or "v".
  # Pixels per side folded into channels before the UNet (space-to-depth) and unfolded after
  # it: 1 is ADM; 2 runs the UNet at half the resolution (a 4x cheaper CPU recipe).
  patch_size: int = 1
  text_layers: int = 2
  text_width: int = 128
  text_heads: int = 4
  text_ctx: int = 0  # Text positions (GLIDE: 128); 0 = the records' caption length.
  diffusion_steps: int = 1000
  noise_schedule: str = "cosine"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def __post_init__(self):
    set_ = lambda k, v: object.__setattr__(self, k, v)
    set_("dtype", layers.dtype_from_name(self.dtype, "config.model.dtype"))
    set_("param_dtype", layers.dtype_from_name(self.param_dtype, "config.model.param_dtype"))
    set_("channel_mult", tuple(int(m) for m in self.channel_mult))
    set_("attention_resolutions", tuple(int(r) for r in self.attention_resolutions))
    for key in ("model_channels", "num_res_blocks", "num_head_channels", "norm_groups",
                "text_width", "text_heads", "diffusion_steps", "patch_size"):
      if getattr(self, key) < 1:
        raise errors.ConfigError(f"config.model.{key}={getattr(self, key)}: must be >= 1")
    if not self.channel_mult or min(self.channel_mult) < 1:
      raise errors.ConfigError(f"config.model.channel_mult={self.channel_mult}: one positive "
                               "multiplier per level")
    factor = 2 ** (len(self.channel_mult) - 1) * self.patch_size
    if self.image_size % factor:
      raise errors.ConfigError(
          f"config.model.channel_mult={self.channel_mult} halves the image "
          f"{len(self.channel_mult) - 1} times after config.model.patch_size="
          f"{self.patch_size}; the records' {self.image_size} px do not divide")
    reached = {self.resolution // 2 ** i for i in range(len(self.channel_mult))}
    bad = [r for r in self.attention_resolutions if r not in reached]
    if bad:
      raise errors.ConfigError(
          f"config.model.attention_resolutions={self.attention_resolutions}: {bad} not among "
          f"the UNet's feature-map resolutions {sorted(reached, reverse=True)} at "
          f"{self.image_size} px")
    for c in {self.model_channels * m for m in self.channel_mult}:
      if c % self.norm_groups:
        raise errors.ConfigError(f"config.model.norm_groups={self.norm_groups} does not divide "
                                 f"a level's {c} channels")
      if c in self._attention_widths() and c % self.num_head_channels:
        raise errors.ConfigError(f"config.model.num_head_channels={self.num_head_channels} "
                                 f"does not divide an attention block's {c} channels")
    if self.text_width % self.text_heads:
      raise errors.ConfigError(f"config.model.text_width={self.text_width} is not divisible "
                               f"by config.model.text_heads={self.text_heads}")
    if self.text_layers < 0:
      raise errors.ConfigError(f"config.model.text_layers={self.text_layers}: must be >= 0")
    if self.text_ctx and self.text_ctx < self.text_seq_len:
      raise errors.ConfigError(f"config.model.text_ctx={self.text_ctx} < the records' caption "
                               f"length {self.text_seq_len} (config.data.text_seq_len)")
    if not 0.0 <= self.dropout < 1.0:
      raise errors.ConfigError(f"config.model.dropout={self.dropout}: must be in [0, 1)")
    if self.prediction not in ("epsilon", "v"):
      raise errors.ConfigError(f"config.model.prediction={self.prediction!r}: choose "
                               "'epsilon' or 'v'")
    if self.noise_schedule not in ("linear", "cosine"):
      raise errors.ConfigError(f"config.model.noise_schedule={self.noise_schedule!r}: choose "
                               "'linear' or 'cosine'")

  def _attention_widths(self) -> set[int]:
    ds = {self.resolution // r for r in self.attention_resolutions}
    widths = {self.model_channels * m for i, m in enumerate(self.channel_mult) if 2 ** i in ds}
    if self.channel_mult:
      widths.add(self.model_channels * self.channel_mult[-1])  # The middle block's.
    return widths

  @property
  def resolution(self) -> int:
    """Side of the UNet's first feature map (the image over patch_size)."""
    return self.image_size // self.patch_size

  @property
  def context(self) -> int:
    return self.text_ctx or self.text_seq_len

  @property
  def out_channels(self) -> int:
    return 6 if self.learn_sigma else 3

  @property
  def emb_dim(self) -> int:
    return 4 * self.model_channels

  def text_stack(self) -> layers.TransformerConfig:
    return layers.TransformerConfig(
        num_layers=self.text_layers, emb_dim=self.text_width, num_heads=self.text_heads,
        mlp_dim=4 * self.text_width, dtype=self.dtype, param_dtype=self.param_dtype,
        norm_eps=1e-5, activation="gelu", causal=False)


def timestep_embedding(t_B: jax.Array, dim: int, max_period: float = 10_000.0) -> jax.Array:
  """guided-diffusion's sinusoidal embedding of (float) timesteps: [cos | sin], Bxdim."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = jnp.asarray(t_B, jnp.float32)[:, None] * freqs[None]
  emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
  if dim % 2:
    emb = jnp.concatenate([emb, jnp.zeros_like(emb[:, :1])], axis=-1)
  return emb


def space_to_depth(x_BxHxWxC: jax.Array, p: int) -> jax.Array:
  """B x H x W x C -> B x H/p x W/p x (p p C): each p x p patch's pixels, row-major, each
  pixel's C channels together."""
  b, h, w, c = x_BxHxWxC.shape
  x = x_BxHxWxC.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h // p, w // p, p * p * c)


def depth_to_space(x_BxhxwxK: jax.Array, p: int) -> jax.Array:
  """The inverse of space_to_depth: B x h x w x (p p C) -> B x hp x wp x C."""
  b, h, w, k = x_BxhxwxK.shape
  c = k // (p * p)
  x = x_BxhxwxK.reshape(b, h, w, p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h * p, w * p, c)


def _conv(cfg: UNetConfig, features: int, kernel: int = 3, *, stride: int = 1,
          zero: bool = False, head: bool = False, name: Optional[str] = None) -> nn.Conv:
  """A conv padded like PyTorch's (kernel // 2 on every side, also at stride 2)."""
  init = nn.initializers.zeros_init() if zero else nn.initializers.lecun_normal()
  pad = kernel // 2
  return nn.Conv(
      features, (kernel, kernel), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
      dtype=cfg.dtype, param_dtype=cfg.param_dtype, name=name,
      kernel_init=nn.with_logical_partitioning(
          init, HEAD_KERNEL_AXES if head else KERNEL_AXES),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                             (None,) if head else CHANNEL_AXES))


def _dense(cfg: UNetConfig, features: int, *, zero: bool = False,
           name: Optional[str] = None) -> nn.Dense:
  init = nn.initializers.zeros_init() if zero else nn.initializers.lecun_normal()
  return nn.Dense(features, dtype=cfg.dtype, param_dtype=cfg.param_dtype, name=name,
                  kernel_init=nn.with_logical_partitioning(init, DENSE_AXES),
                  bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                         CHANNEL_AXES))


class GroupNorm(nn.Module):
  """GroupNorm in float32 (guided-diffusion's GroupNorm32), cast back to the input dtype."""
  groups: int
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    out = nn.GroupNorm(
        num_groups=self.groups, epsilon=1e-5, dtype=jnp.float32, param_dtype=self.param_dtype,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, CHANNEL_AXES),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, CHANNEL_AXES),
        name="norm")(x.astype(jnp.float32))
    return out.astype(x.dtype)


def _resample(x: jax.Array, mode: str) -> jax.Array:
  b, h, w, c = x.shape
  if mode == "up":
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
  return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


class ResBlock(nn.Module):
  config: UNetConfig
  out_channels: int
  resample: str = ""  # "", "up" or "down" (resblock_updown).

  @nn.compact
  def __call__(self, x: jax.Array, emb_BxD: jax.Array, *, train: bool) -> jax.Array:
    cfg = self.config
    h = nn.silu(GroupNorm(cfg.norm_groups, cfg.param_dtype, name="in_norm")(x))
    if self.resample:
      h, x = _resample(h, self.resample), _resample(x, self.resample)
    h = _conv(cfg, self.out_channels, name="in_conv")(h)
    e = _dense(cfg, self.out_channels * (2 if cfg.use_scale_shift_norm else 1),
               name="emb")(nn.silu(emb_BxD))[:, None, None, :].astype(h.dtype)
    out_norm = GroupNorm(cfg.norm_groups, cfg.param_dtype, name="out_norm")
    if cfg.use_scale_shift_norm:
      scale, shift = jnp.split(e, 2, axis=-1)
      h = out_norm(h) * (1 + scale) + shift
    else:
      h = out_norm(h + e)
    h = nn.Dropout(cfg.dropout)(nn.silu(h), deterministic=not train)
    h = _conv(cfg, self.out_channels, zero=True, name="out_conv")(h)
    if x.shape[-1] != self.out_channels:
      x = _conv(cfg, self.out_channels, 1, name="skip")(x)
    return nn.with_logical_constraint(x + h, ACTIVATION_AXES)


class AttentionBlock(nn.Module):
  """Self-attention over the feature map, with the text's keys and values in front."""
  config: UNetConfig

  @nn.compact
  def __call__(self, x: jax.Array, text_BxSxE: Optional[jax.Array]) -> jax.Array:
    cfg = self.config
    b, h, w, c = x.shape
    heads, d = c // cfg.num_head_channels, cfg.num_head_channels
    y = GroupNorm(cfg.norm_groups, cfg.param_dtype, name="norm")(x).reshape(b, h * w, c)
    qkv = _dense(cfg, 3 * c, name="qkv")(y).reshape(b, h * w, heads, 3, d)
    q, k, v = qkv[..., 0, :], qkv[..., 1, :], qkv[..., 2, :]
    if text_BxSxE is not None:
      kv = _dense(cfg, 2 * c, name="encoder_kv")(text_BxSxE).reshape(b, -1, heads, 2, d)
      k = jnp.concatenate([kv[..., 0, :].astype(k.dtype), k], axis=1)
      v = jnp.concatenate([kv[..., 1, :].astype(v.dtype), v], axis=1)
    a = jax.nn.dot_product_attention(q, k, v).reshape(b, h * w, c)
    out = _dense(cfg, c, zero=True, name="proj_out")(a).reshape(b, h, w, c)
    return nn.with_logical_constraint(x + out, ACTIVATION_AXES)


class TextEncoder(nn.Module):
  """Caption ids + valid mask -> (per-position outputs BxSxW, the last position's BxW)."""
  config: UNetConfig

  @nn.compact
  def __call__(self, text_BxLt: jax.Array, valid_BxLt: jax.Array, *, train: bool):
    cfg = self.config
    ids = jnp.asarray(text_BxLt, jnp.int32)
    valid = jnp.asarray(valid_BxLt, bool)
    pad = cfg.context - ids.shape[1]
    if pad:
      ids = jnp.pad(ids, ((0, 0), (0, pad)), constant_values=cfg.text_pad_id)
      valid = jnp.pad(valid, ((0, 0), (0, pad)))
    table = lambda name: self.param(
        name, nn.with_logical_partitioning(layers.embed_init, (None, "embed")),
        (cfg.context, cfg.text_width), cfg.param_dtype)
    positions, padding = table("positions"), table("padding")
    tokens = layers.Embed(layers.pad_vocab(cfg.text_vocab_size), cfg.text_width,
                          dtype=cfg.dtype, param_dtype=cfg.param_dtype, name="token_embed")(ids)
    x = jnp.where(valid[..., None], tokens + jnp.asarray(positions, cfg.dtype)[None],
                  jnp.asarray(padding, cfg.dtype)[None])
    x = layers.TransformerStack(cfg.text_stack(), name="transformer")(
        x, None, deterministic=not train)
    x = layers.LayerNorm(cfg.dtype, cfg.param_dtype, 1e-5, name="final_norm")(x)
    return x, x[:, -1]


class GlideUNet(nn.Module):
  """(noisy images BxHxWx3 in [-1, 1], timesteps B, caption) -> BxHxWx(3 or 6)."""
  config: UNetConfig

  @nn.compact
  def __call__(self, x_BxHxWx3: jax.Array, t_B: jax.Array, text_BxLt: jax.Array,
               valid_BxLt: jax.Array, *, train: bool = False) -> jax.Array:
    cfg = self.config
    mc, emb_dim = cfg.model_channels, cfg.emb_dim
    emb = _dense(cfg, emb_dim, name="time_embed_0")(timestep_embedding(t_B, mc))
    emb = _dense(cfg, emb_dim, name="time_embed_1")(nn.silu(emb))
    text_BxSxW, last_BxW = TextEncoder(cfg, name="text")(text_BxLt, valid_BxLt, train=train)
    emb = emb + _dense(cfg, emb_dim, name="text_proj")(last_BxW).astype(emb.dtype)
    attn_ds = {cfg.resolution // r for r in cfg.attention_resolutions}

    def res(h, channels, name, resample=""):
      return ResBlock(cfg, channels, resample, name=name)(h, emb, train=train)

    def attn(h, name):
      return AttentionBlock(cfg, name=name)(h, text_BxSxW)

    p = cfg.patch_size
    x = jnp.asarray(x_BxHxWx3, cfg.dtype)
    if p > 1:
      x = space_to_depth(x, p)
    h = _conv(cfg, mc * cfg.channel_mult[0], name="input_blocks_0")(x)
    skips, ds, n = [h], 1, 1
    for level, mult in enumerate(cfg.channel_mult):
      for _ in range(cfg.num_res_blocks):
        h = res(h, mc * mult, f"input_blocks_{n}_res")
        if ds in attn_ds:
          h = attn(h, f"input_blocks_{n}_attn")
        skips.append(h)
        n += 1
      if level != len(cfg.channel_mult) - 1:
        if cfg.resblock_updown:
          h = res(h, h.shape[-1], f"input_blocks_{n}_down", "down")
        else:
          h = _conv(cfg, h.shape[-1], stride=2, name=f"input_blocks_{n}_down")(h)
        skips.append(h)
        ds, n = ds * 2, n + 1
    h = res(h, h.shape[-1], "middle_0")
    h = attn(h, "middle_attn")
    h = res(h, h.shape[-1], "middle_1")
    n = 0
    for level, mult in reversed(list(enumerate(cfg.channel_mult))):
      for i in range(cfg.num_res_blocks + 1):
        h = res(jnp.concatenate([h, skips.pop()], axis=-1), mc * mult, f"output_blocks_{n}_res")
        if ds in attn_ds:
          h = attn(h, f"output_blocks_{n}_attn")
        if level and i == cfg.num_res_blocks:
          if cfg.resblock_updown:
            h = res(h, h.shape[-1], f"output_blocks_{n}_up", "up")
          else:
            h = _conv(cfg, h.shape[-1], name=f"output_blocks_{n}_up")(_resample(h, "up"))
          ds //= 2
        n += 1
    h = nn.silu(GroupNorm(cfg.norm_groups, cfg.param_dtype, name="out_norm")(h))
    out = _conv(cfg, cfg.out_channels * p * p, zero=True, head=True, name="out_conv")(h)
    if p > 1:
      out = depth_to_space(out, p)
    return out.astype(jnp.float32)


def forward_flops(cfg: UNetConfig, count_padding: bool = True
                  ) -> list[tuple[str, float, str]]:
  """Multiply-add FLOPs (2 per MAC) of one example's forward pass, by part: (name, FLOPs,
  formula). Convolutions and dense layers only (norms, activations and softmax are
  elementwise, under 1% here); attention counts QK^T and AV over the text and image keys.
  count_padding=False leaves out a 3x3 convolution's taps on its zero padding at the
  borders, as XLA's cost analysis does (a large share at the 4 px level of a 32 px tiny)."""
  s, mc, e, p = cfg.resolution, cfg.model_channels, cfg.emb_dim, cfg.patch_size
  ctx, w = cfg.context, cfg.text_width
  totals = {"convs": 0.0, "attention projections": 0.0, "attention scores": 0.0,
            "timestep and text embeddings": 0.0}

  def conv(r, cin, cout, k=3, stride=1):
    """At r x r outputs; padded 1 per side, so per axis a 3x3 tap falls on the padding
    twice at stride 1 and once at stride 2."""
    taps = k * r if count_padding or k == 1 else k * r - (2 if stride == 1 else 1)
    return 2.0 * taps * taps * cin * cout

  def res(r, cin, cout, resample=""):
    r_out = r * 2 if resample == "up" else r // 2 if resample == "down" else r
    f = conv(r_out, cin, cout) + conv(r_out, cout, cout)
    f += 2.0 * e * cout * (2 if cfg.use_scale_shift_norm else 1)
    if cin != cout:
      f += conv(r_out, cin, cout, 1)
    totals["convs"] += f

  def attn(r, c):
    hw = r * r
    totals["attention projections"] += 2.0 * hw * c * 4 * c + 2.0 * ctx * w * 2 * c
    totals["attention scores"] += 2.0 * 2 * hw * (hw + ctx) * c

  attn_ds = {s // r for r in cfg.attention_resolutions}
  totals["convs"] += conv(s, 3 * p * p, mc * cfg.channel_mult[0])
  ch, ds, chans = mc * cfg.channel_mult[0], 1, [mc * cfg.channel_mult[0]]
  for level, mult in enumerate(cfg.channel_mult):
    for _ in range(cfg.num_res_blocks):
      res(s // ds, ch, mc * mult)
      ch = mc * mult
      if ds in attn_ds:
        attn(s // ds, ch)
      chans.append(ch)
    if level != len(cfg.channel_mult) - 1:
      if cfg.resblock_updown:
        res(s // ds, ch, ch, "down")
      else:
        totals["convs"] += conv(s // ds // 2, ch, ch, stride=2)
      chans.append(ch)
      ds *= 2
  res(s // ds, ch, ch)
  attn(s // ds, ch)
  res(s // ds, ch, ch)
  for level, mult in reversed(list(enumerate(cfg.channel_mult))):
    for i in range(cfg.num_res_blocks + 1):
      res(s // ds, ch + chans.pop(), mc * mult)
      ch = mc * mult
      if ds in attn_ds:
        attn(s // ds, ch)
      if level and i == cfg.num_res_blocks:
        if cfg.resblock_updown:
          res(s // ds, ch, ch, "up")
        else:
          totals["convs"] += conv(s // ds * 2, ch, ch)
        ds //= 2
  totals["convs"] += conv(s, ch, cfg.out_channels * p * p)
  totals["timestep and text embeddings"] += 2.0 * (mc * e + e * e + w * e)
  out = [(k, v, "") for k, v in totals.items()]
  text = 2.0 * cfg.text_layers * ctx * (12 * w * w + 2 * ctx * w)
  out.append(("text transformer", text,
              f"2 x {cfg.text_layers} layers x {ctx} positions x (12 x {w}^2 + 2 x {ctx} "
              f"x {w})"))
  return out


def num_params_estimate(cfg: UNetConfig) -> int:
  """Parameter count without building the model (for docs and benches)."""
  shapes = jax.eval_shape(
      lambda: GlideUNet(cfg).init(
          jax.random.key(0), jnp.zeros((1, cfg.image_size, cfg.image_size, 3)),
          jnp.zeros((1,), jnp.int32), jnp.zeros((1, cfg.text_seq_len), jnp.int32),
          jnp.ones((1, cfg.text_seq_len), bool)))
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(nn.meta.unbox(shapes))))
