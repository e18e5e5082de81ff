"""Transformer building blocks shared by every token family (UPGen, decoder-only, enc-dec).

Every parameter carries logical axis names (configs/common.py DEFAULT_RULES: "embed", "mlp",
"heads", "kv", "vocab"; scanned layers add a leading "layers" axis, which no rule maps, so it
stays replicated) and large activations carry logical constraints, so the mesh rules alone
decide data / FSDP / tensor parallelism.

Pieces: `LayerNorm`, `Mlp`, `Attention` (self or cross, key mask, causal, KV-cache decode in
the flax "cache" collection), `TransformerBlock` (pre-LN; optional cross-attention for an
encoder-decoder), `TransformerStack` (N blocks, optional `nn.scan` over layers and `nn.remat`),
`Embed` (with `attend` for weight tying) and `Unembed` (output projection to a padded vocab);
the fixed sinusoidal position tables are upgen/models/positions.py.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional

from flax import linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from upgen import errors

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
ATTENTION_IMPLS = (None, "xla", "cudnn")
REMAT_POLICIES: dict[str, Optional[Callable[..., Any]]] = {
    "none": None,  # No rematerialization.
    "full": jax.checkpoint_policies.nothing_saveable,  # Recompute the whole block.
    "dots": jax.checkpoint_policies.checkpoint_dots,  # Save matmul outputs.
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
ACTIVATIONS = {
    "gelu_tanh": functools.partial(nn.gelu, approximate=True),  # GPT-2's "gelu_new".
    "gelu": functools.partial(nn.gelu, approximate=False),  # erf: BERT's and BART's "gelu".
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),  # OpenAI CLIP's.
}
# Vocabulary-sized tables are padded to this multiple so "vocab" shards evenly over "tensor".
VOCAB_PAD_MULTIPLE = 128

dense_init = nn.initializers.xavier_uniform()
embed_init = nn.initializers.normal(stddev=0.02)  # BERT / MaskGIT token embeddings.


def dtype_from_name(name: Any, key: str = "config.model.dtype") -> Any:
  """"bfloat16" -> jnp.bfloat16 (a dtype passes through); clear error naming `key`."""
  if not isinstance(name, str):
    return jnp.dtype(name).type
  if name not in DTYPES:
    raise errors.ConfigError(f"{key}={name!r}: choose one of {sorted(DTYPES)}")
  return DTYPES[name]


def pad_vocab(size: int, multiple: int = VOCAB_PAD_MULTIPLE) -> int:
  """Rounds a table size up to a multiple (extra rows / logits are never used)."""
  return -(-size // multiple) * multiple


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Hyper-parameters of a stack of transformer blocks. The token families' model configs
  extend it with their own fields (parsed from config.model by upgen.schema), so its checks
  name config.model keys."""
  num_layers: int
  emb_dim: int
  num_heads: int
  mlp_dim: int
  dropout_rate: float = 0.0  # On residual branches.
  attention_dropout_rate: float = 0.0  # On attention weights (forces the "xla" einsum path).
  dtype: Any = jnp.float32  # Compute dtype (a name such as "bfloat16" is converted).
  param_dtype: Any = jnp.float32  # Parameter storage dtype.
  causal: bool = False  # Causal self-attention (decoder-only / decoder of an enc-dec).
  cross_attention: bool = False  # Blocks attend to an encoder output (enc-dec decoder).
  decode: bool = False  # Autoregressive decoding with a KV cache ("cache" collection).
  # jax.nn.dot_product_attention: None or "" (jax picks), "xla", "cudnn".
  attention_impl: Optional[str] = None
  scan_layers: bool = False  # nn.scan over layers (params get a leading "layers" axis).
  remat: str = "none"  # Rematerialization policy, a key of REMAT_POLICIES.
  # "pre": x + f(LN(x)) (pre-LN); "post": LN(x + f(x)) (BERT / BART, post-LN).
  norm_position: str = "pre"
  norm_eps: float = 1e-6  # LayerNorm epsilon (BART: 1e-5).
  activation: str = "gelu_tanh"  # MLP activation, a key of ACTIVATIONS.

  def __post_init__(self):
    set_ = functools.partial(object.__setattr__, self)
    set_("dtype", dtype_from_name(self.dtype, "config.model.dtype"))
    set_("param_dtype", dtype_from_name(self.param_dtype, "config.model.param_dtype"))
    set_("attention_impl", self.attention_impl or None)
    if self.num_layers < 0:
      raise errors.ConfigError(f"config.model.num_layers={self.num_layers}: must be >= 0")
    for name in ("emb_dim", "num_heads", "mlp_dim"):
      if getattr(self, name) < 1:
        raise errors.ConfigError(f"config.model.{name}={getattr(self, name)}: must be >= 1")
    if self.emb_dim % self.num_heads:
      raise errors.ConfigError(f"config.model.emb_dim={self.emb_dim} is not divisible by "
                               f"config.model.num_heads={self.num_heads}")
    for name in ("dropout_rate", "attention_dropout_rate"):
      if not 0.0 <= getattr(self, name) < 1.0:
        raise errors.ConfigError(f"config.model.{name}={getattr(self, name)}: must be in [0, 1)")
    if self.attention_impl not in ATTENTION_IMPLS:
      raise errors.ConfigError(
          f"config.model.attention_impl={self.attention_impl!r}: choose one of "
          f"{ATTENTION_IMPLS}")
    if self.remat not in REMAT_POLICIES:
      raise errors.ConfigError(f"config.model.remat={self.remat!r}: choose one of "
                               f"{sorted(REMAT_POLICIES)}")
    if self.norm_position not in ("pre", "post"):
      raise errors.ConfigError(f"config.model.norm_position={self.norm_position!r}: choose "
                               "'pre' or 'post'")
    if self.activation not in ACTIVATIONS:
      raise errors.ConfigError(f"config.model.activation={self.activation!r}: choose one of "
                               f"{sorted(ACTIVATIONS)}")

  def stack(self, **changes: Any) -> "TransformerConfig":
    """Just the transformer fields (a subclass's extra fields dropped), with `changes`."""
    fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(TransformerConfig)}
    return TransformerConfig(**{**fields, **changes})

  @property
  def head_dim(self) -> int:
    return self.emb_dim // self.num_heads


def frame_caption(text_BxLt: jax.Array, valid_BxLt: jax.Array, pad_id: int,
                  bos_id: int = -1, eos_id: int = -1) -> tuple[jax.Array, jax.Array]:
  """([BOS] caption [EOS] [PAD]..., valid) of length Lt + (bos_id >= 0) + (eos_id >= 0):
  the caption is the valid prefix of each row (an all-invalid row is the empty caption),
  each frame token present where its id is >= 0."""
  text_BxLt = jnp.asarray(text_BxLt, jnp.int32)
  b = text_BxLt.shape[0]
  n_B = jnp.sum(jnp.asarray(valid_BxLt, jnp.int32), axis=1)
  pad = jnp.full((b, 1), pad_id, jnp.int32)
  start = int(bos_id >= 0)
  ids = jnp.concatenate(([pad] if start else []) + [text_BxLt] + ([pad] if eos_id >= 0 else []),
                        axis=1)
  pos_L = jnp.arange(ids.shape[1])[None]
  end_B = n_B[:, None] + start  # One past the caption.
  ids = jnp.where((pos_L >= start) & (pos_L < end_B), ids, pad_id)
  if start:
    ids = jnp.where(pos_L == 0, bos_id, ids)
  if eos_id >= 0:
    ids = jnp.where(pos_L == end_B, eos_id, ids)
    end_B = end_B + 1
  return ids, pos_L < end_B


def key_mask(valid_BxS: jax.Array) -> jax.Array:
  """Key-padding mask Bx1x1xS for `Attention`: True where a key may be attended."""
  return valid_BxS.astype(bool)[:, None, None, :]


class LayerNorm(nn.Module):
  """LayerNorm with ("embed",) scale and bias."""
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  epsilon: float = 1e-6

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return nn.LayerNorm(
        epsilon=self.epsilon, dtype=self.dtype, param_dtype=self.param_dtype,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)))(x)


class Mlp(nn.Module):
  """Dense(mlp_dim) -> activation (config.activation) -> Dense(emb_dim)."""
  config: TransformerConfig

  @nn.compact
  def __call__(self, x_BxLxE: jax.Array) -> jax.Array:
    cfg = self.config
    h_BxLxM = nn.Dense(
        cfg.mlp_dim, dtype=cfg.dtype, param_dtype=cfg.param_dtype, name="wi",
        kernel_init=nn.with_logical_partitioning(dense_init, ("embed", "mlp")),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("mlp",)))(x_BxLxE)
    h_BxLxM = nn.with_logical_constraint(ACTIVATIONS[cfg.activation](h_BxLxM),
                                         ("batch", "length", "mlp"))
    return nn.Dense(
        cfg.emb_dim, dtype=cfg.dtype, param_dtype=cfg.param_dtype, name="wo",
        kernel_init=nn.with_logical_partitioning(dense_init, ("mlp", "embed")),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)))(h_BxLxM)


def fused_attention(q_BxTxHxD, k_BxSxHxD, v_BxSxHxD, mask, *, causal: bool,
                    implementation: str = "cudnn") -> jax.Array:
  """jax.nn.dot_product_attention(implementation="cudnn") for any mask shape and length.

  cuDNN's fused kernel takes a mask only at full BxHxTxS extent (a key-padding mask
  Bx1x1xS is broadcast here), and it trains only on even lengths: an odd T or S gets one
  padding position that no real query attends to and that is cut from the output.
  `implementation` is a parameter so the padding can be checked on CPU with "xla".
  """
  b, t, _, _ = q_BxTxHxD.shape
  s = k_BxSxHxD.shape[1]
  pad_t, pad_s = t % 2, s % 2
  if mask is None:
    if not (pad_t or pad_s):
      return jax.nn.dot_product_attention(q_BxTxHxD, k_BxSxHxD, v_BxSxHxD, is_causal=causal,
                                          implementation=implementation)
    mask = jnp.ones((1, 1, 1, s), bool)
  mask = jnp.broadcast_to(jnp.asarray(mask, bool), (b, mask.shape[1], t, s))
  if pad_t or pad_s:
    pad = lambda x, n: jnp.pad(x, ((0, 0), (0, n), (0, 0), (0, 0)))
    q_BxTxHxD, k_BxSxHxD, v_BxSxHxD = (pad(q_BxTxHxD, pad_t), pad(k_BxSxHxD, pad_s),
                                       pad(v_BxSxHxD, pad_s))
    # The padded query row may attend anything (it is dropped); the padded key nothing.
    mask = jnp.pad(mask, ((0, 0), (0, 0), (0, pad_t), (0, 0)), constant_values=True)
    mask = jnp.pad(mask, ((0, 0), (0, 0), (0, 0), (0, pad_s)), constant_values=False)
  out = jax.nn.dot_product_attention(q_BxTxHxD, k_BxSxHxD, v_BxSxHxD, mask=mask,
                                     is_causal=causal, implementation=implementation)
  return out[:, :t]


def xla_attention(q_BxTxHxD, k_BxSxHxD, v_BxSxHxD, mask, *, causal: bool,
                  implementation: Optional[str] = None) -> jax.Array:
  """jax.nn.dot_product_attention with the boolean `mask` and causality as an additive bias
  (0 or a large negative number): jax masks by a select over the BxHxTxS scores with a
  second select in the backward pass (docs/performance.md), a bias is free there. Same
  outputs: a masked score's probability is exactly 0 either way, and a row with no allowed
  key attends uniformly either way; same gradients, but for a row with no allowed key (an
  example with no valid token, which no loss reads)."""
  if mask is None and not causal:
    return jax.nn.dot_product_attention(q_BxTxHxD, k_BxSxHxD, v_BxSxHxD,
                                        implementation=implementation)
  t, s = q_BxTxHxD.shape[1], k_BxSxHxD.shape[1]
  allowed = jnp.ones((1, 1, 1, s), bool) if mask is None else jnp.asarray(mask, bool)
  if causal:
    allowed = allowed & jnp.tril(jnp.ones((t, s), bool))[None, None]
  dtype = jnp.promote_types(q_BxTxHxD.dtype, jnp.float32)
  bias = jnp.where(allowed, jnp.zeros((), dtype), jnp.finfo(dtype).min / 2)
  return jax.nn.dot_product_attention(q_BxTxHxD, k_BxSxHxD, v_BxSxHxD, bias=bias,
                                      implementation=implementation)


def manual_attention(q_BxTxHxD, k_BxSxHxD, v_BxSxHxD, mask, *, causal: bool,
                     dropout_rate: float = 0.0, dropout_rng: Optional[jax.Array] = None):
  """Einsum attention matching jax.nn.dot_product_attention's "xla" path, plus dropout."""
  scale = 1.0 / np.sqrt(q_BxTxHxD.shape[-1])
  logits_BxHxTxS = jnp.einsum("bthd,bshd->bhts", q_BxTxHxD, k_BxSxHxD,
                              preferred_element_type=jnp.float32) * scale
  t, s = logits_BxHxTxS.shape[-2:]
  allowed = jnp.ones((1, 1, t, s), bool)
  if mask is not None:
    allowed = allowed & mask
  if causal:
    allowed = allowed & jnp.tril(jnp.ones((t, s), bool))[None, None]
  logits_BxHxTxS = jnp.where(allowed, logits_BxHxTxS, jnp.finfo(jnp.float32).min)
  probs_BxHxTxS = jax.nn.softmax(logits_BxHxTxS, axis=-1)
  if dropout_rate > 0.0:
    keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, probs_BxHxTxS.shape)
    probs_BxHxTxS = jnp.where(keep, probs_BxHxTxS / (1.0 - dropout_rate), 0.0)
  return jnp.einsum("bhts,bshd->bthd", probs_BxHxTxS.astype(v_BxSxHxD.dtype), v_BxSxHxD)


class HeadsDense(nn.Module):
  """Contracts the last `num_in` axes of x with a kernel of shape in_shape + features.

  Like nn.DenseGeneral, but the kernel is created at its full shape, so its logical axis
  names (e.g. ("embed", "heads", "kv")) hold at initialization under a mesh (DenseGeneral
  initializes a flattened kernel). Xavier-uniform over (fan_in, fan_out) of those axes.
  """
  features: tuple[int, ...]
  num_in: int
  names: tuple[str, ...]
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    in_shape = x.shape[x.ndim - self.num_in:]
    n_out = len(self.features)
    init = nn.initializers.variance_scaling(
        1.0, "fan_avg", "uniform", in_axis=tuple(range(self.num_in)),
        out_axis=tuple(range(self.num_in, self.num_in + n_out)))
    kernel = self.param("kernel", nn.with_logical_partitioning(init, self.names),
                        tuple(in_shape) + tuple(self.features), self.param_dtype)
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros,
                                                           self.names[self.num_in:]),
                      tuple(self.features), self.param_dtype)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    contract = (tuple(range(x.ndim - self.num_in, x.ndim)), tuple(range(self.num_in)))
    return jax.lax.dot_general(x, kernel, (contract, ((), ()))) + bias


class Attention(nn.Module):
  """Multi-head attention: q/k/v/out DenseGeneral, key mask, causal, KV-cache decode.

  `mask` is boolean, broadcastable to BxHxTxS (e.g. `key_mask(valid_BxS)`), True = attend.
  With `config.decode` (self-attention only) keys/values go to a "cache" collection sized
  by the sequence given at `init`; each call then appends its T tokens (T=1 per step, or a
  prompt prefill) and attends causally to everything cached so far. Writing past the cache
  length is not detected (it happens inside jit); the caller bounds the number of steps.
  """
  config: TransformerConfig
  is_cross: bool = False  # Cross-attention: never causal, never cached.

  def _proj(self, name: str, x: jax.Array) -> jax.Array:
    cfg = self.config
    return HeadsDense((cfg.num_heads, cfg.head_dim), 1, ("embed", "heads", "kv"), cfg.dtype,
                      cfg.param_dtype, name=name)(x)

  def _update_cache(self, k_BxTxHxD, v_BxTxHxD, mask):
    """Appends this call's keys/values to the cache: -> (k, v, mask, used_cache)."""
    is_initialized = self.has_variable("cache", "cached_key")
    cached_k = self.variable("cache", "cached_key", jnp.zeros, k_BxTxHxD.shape, k_BxTxHxD.dtype)
    cached_v = self.variable("cache", "cached_value", jnp.zeros, v_BxTxHxD.shape,
                             v_BxTxHxD.dtype)
    index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
    if not is_initialized:  # The init pass only creates the cache; attend as a full forward.
      return k_BxTxHxD, v_BxTxHxD, mask, False
    batch, max_len, heads, depth = cached_k.value.shape
    if k_BxTxHxD.shape[0] != batch or k_BxTxHxD.shape[2:] != (heads, depth):
      raise ValueError(f"decode: keys {k_BxTxHxD.shape} do not fit the cache "
                       f"{cached_k.value.shape}")
    cur = index.value
    t = k_BxTxHxD.shape[1]
    cached_k.value = jax.lax.dynamic_update_slice(cached_k.value, k_BxTxHxD, (0, cur, 0, 0))
    cached_v.value = jax.lax.dynamic_update_slice(cached_v.value, v_BxTxHxD, (0, cur, 0, 0))
    index.value = cur + t
    q_pos_T = cur + jnp.arange(t)
    allowed_1x1xTxS = (jnp.arange(max_len)[None, :] <= q_pos_T[:, None])[None, None]
    mask = allowed_1x1xTxS if mask is None else mask & allowed_1x1xTxS
    return cached_k.value, cached_v.value, mask, True

  def _cross_cache(self, kv_BxSxE: Optional[jax.Array], mask: Optional[jax.Array]):
    """Decoding cross-attention: the prefill (kv given) projects and caches the encoder's keys,
    values and key mask; the steps after it (kv None) read them."""
    if kv_BxSxE is None:
      return (self.get_variable("cache", "cross_key"), self.get_variable("cache", "cross_value"),
              self.get_variable("cache", "cross_mask"))
    k = self._proj("key", kv_BxSxE)
    v = self._proj("value", kv_BxSxE)
    mask = jnp.ones((k.shape[0], 1, 1, k.shape[1]), bool) if mask is None else jnp.broadcast_to(
        mask, (k.shape[0], 1, 1, k.shape[1]))
    for name, value in (("cross_key", k), ("cross_value", v), ("cross_mask", mask)):
      self.variable("cache", name, jnp.zeros, value.shape, value.dtype).value = value
    return k, v, mask

  @nn.compact
  def __call__(self, x_BxTxE: jax.Array, kv_BxSxE: Optional[jax.Array] = None,
               mask: Optional[jax.Array] = None, *, deterministic: bool) -> jax.Array:
    cfg = self.config
    qkv_names = ("batch", "length", "heads", "kv")
    q = nn.with_logical_constraint(self._proj("query", x_BxTxE), qkv_names)
    causal = cfg.causal and not self.is_cross
    used_cache = False
    if self.is_cross and cfg.decode:
      k, v, mask = self._cross_cache(kv_BxSxE, mask)
      used_cache = kv_BxSxE is None
    else:
      kv_BxSxE = x_BxTxE if kv_BxSxE is None else kv_BxSxE
      k = self._proj("key", kv_BxSxE)
      v = self._proj("value", kv_BxSxE)
    k = nn.with_logical_constraint(k, qkv_names)
    v = nn.with_logical_constraint(v, qkv_names)
    if cfg.decode and not self.is_cross:
      k, v, mask, used_cache = self._update_cache(k, v, mask)
      causal = causal and not used_cache  # The cache mask is already causal.
    dropout = 0.0 if deterministic else cfg.attention_dropout_rate
    if dropout > 0.0:
      out = manual_attention(q, k, v, mask, causal=causal, dropout_rate=dropout,
                             dropout_rng=self.make_rng("dropout"))
    elif cfg.attention_impl == "cudnn" and not used_cache:
      out = fused_attention(q, k, v, mask, causal=causal)
    else:
      # A KV-cache step (one query against the cache) runs the XLA path.
      impl = None if used_cache else cfg.attention_impl
      out = xla_attention(q, k, v, mask, causal=causal, implementation=impl)
    out = nn.with_logical_constraint(out, qkv_names)
    return HeadsDense((cfg.emb_dim,), 2, ("heads", "kv", "embed"), cfg.dtype, cfg.param_dtype,
                      name="out")(out)


class TransformerBlock(nn.Module):
  """Self-attention [+ cross-attention to an encoder output] + MLP, each a residual branch
  with dropout: pre-LN x + f(LN x), or post-LN LN(x + f(x)) (config.norm_position). In
  decode mode the cross-attention reads the keys and values its prefill cached when
  `encoded_BxSxE` is None."""
  config: TransformerConfig

  @nn.compact
  def __call__(self, x_BxLxE: jax.Array, mask: Optional[jax.Array] = None,
               encoded_BxSxE: Optional[jax.Array] = None, encoded_mask: Optional[jax.Array] = None,
               deterministic: bool = True) -> jax.Array:
    cfg = self.config
    drop = nn.Dropout(cfg.dropout_rate)

    def residual(x_BxLxE, norm_name, branch):
      norm = LayerNorm(cfg.dtype, cfg.param_dtype, cfg.norm_eps, name=norm_name)
      if cfg.norm_position == "pre":
        x_BxLxE = x_BxLxE + drop(branch(norm(x_BxLxE)), deterministic=deterministic)
      else:
        x_BxLxE = norm(x_BxLxE + drop(branch(x_BxLxE), deterministic=deterministic))
      return nn.with_logical_constraint(x_BxLxE, ("batch", "length", "embed"))

    x_BxLxE = residual(x_BxLxE, "ln_attn", lambda y: Attention(cfg, name="attn")(
        y, mask=mask, deterministic=deterministic))
    if cfg.cross_attention:
      if encoded_BxSxE is None and not cfg.decode:
        raise ValueError("TransformerBlock with cross_attention=True needs encoded_BxSxE")
      x_BxLxE = residual(x_BxLxE, "ln_cross", lambda y: Attention(
          cfg, is_cross=True, name="cross_attn")(y, encoded_BxSxE, mask=encoded_mask,
                                                 deterministic=deterministic))
    return residual(x_BxLxE, "ln_mlp", lambda y: Mlp(cfg, name="mlp")(y))


class TransformerStack(nn.Module):
  """`config.num_layers` blocks (params "layers_0".. unrolled, or "layers" with a leading
  layer axis under `scan_layers`), optionally rematerialized with `config.remat`."""
  config: TransformerConfig

  @nn.compact
  def __call__(self, x_BxLxE: jax.Array, mask: Optional[jax.Array] = None,
               encoded_BxSxE: Optional[jax.Array] = None, encoded_mask: Optional[jax.Array] = None,
               *, deterministic: bool) -> jax.Array:
    cfg = self.config
    block_cls = TransformerBlock
    if cfg.remat != "none":
      # Argument 5 (self = 0) is `deterministic`, a Python bool.
      block_cls = nn.remat(block_cls, policy=REMAT_POLICIES[cfg.remat],
                           prevent_cse=not cfg.scan_layers, static_argnums=(5,))
    if not cfg.scan_layers:
      for i in range(cfg.num_layers):
        x_BxLxE = block_cls(cfg, name=f"layers_{i}")(x_BxLxE, mask, encoded_BxSxE, encoded_mask,
                                                     deterministic)
      return x_BxLxE

    def body(block: nn.Module, carry, mask, encoded, encoded_mask):
      return block(carry, mask, encoded, encoded_mask, deterministic), None

    scanned = nn.scan(
        body, variable_axes={"params": 0, "cache": 0},
        split_rngs={"params": True, "dropout": True},
        in_axes=(nn.broadcast, nn.broadcast, nn.broadcast), length=cfg.num_layers,
        metadata_params={nn.PARTITION_NAME: "layers"})
    x_BxLxE, _ = scanned(block_cls(cfg, name="layers"), x_BxLxE, mask, encoded_BxSxE,
                         encoded_mask)
    return x_BxLxE


class Embed(nn.Module):
  """Token embedding with a ("vocab", "embed") table; `attend` gives tied output logits."""
  num_embeddings: int
  features: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  embedding_init: Callable[..., jax.Array] = embed_init

  def setup(self):
    self.embedding = self.param(
        "embedding", nn.with_logical_partitioning(self.embedding_init, ("vocab", "embed")),
        (self.num_embeddings, self.features), self.param_dtype)

  def __call__(self, ids_BxL: jax.Array) -> jax.Array:
    out_BxLxE = jnp.take(jnp.asarray(self.embedding, self.dtype), ids_BxL, axis=0)
    return nn.with_logical_constraint(out_BxLxE, ("batch", "length", "embed"))

  def attend(self, x_BxLxE: jax.Array) -> jax.Array:
    """Logits BxLxN against the embedding table (weight tying)."""
    return jnp.einsum("ble,ne->bln", x_BxLxE, jnp.asarray(self.embedding, self.dtype))


class Unembed(nn.Module):
  """Output projection to `vocab_size` logits (float32); the kernel is padded to
  `pad_vocab(vocab_size)` columns for even "vocab" sharding and the padding is sliced off."""
  vocab_size: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BxLxE: jax.Array) -> jax.Array:
    logits_BxLxP = nn.Dense(
        pad_vocab(self.vocab_size), dtype=self.dtype, param_dtype=self.param_dtype,
        kernel_init=nn.with_logical_partitioning(dense_init, ("embed", "vocab")),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("vocab",)))(x_BxLxE)
    logits_BxLxP = nn.with_logical_constraint(logits_BxLxP, ("batch", "length", "vocab"))
    return logits_BxLxP[..., :self.vocab_size].astype(jnp.float32)


def module_outputs(model: nn.Module, params: Any, *args, of: type, **kwargs
                   ) -> dict[str, jax.Array]:
  """One forward pass of `model`; the output of every submodule of type `of`, by its path
  ("decoder/layers_0"), in call order (`upgen eval probe`'s per-layer image features)."""
  _, state = model.apply(
      {"params": params}, *args, mutable=["intermediates"],
      capture_intermediates=lambda m, method: isinstance(m, of) and method == "__call__",
      **kwargs)
  flat = traverse_util.flatten_dict(state["intermediates"], sep="/")
  return {k.removesuffix("/__call__"): v[0] for k, v in flat.items()}
