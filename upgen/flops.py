"""Model FLOP and byte counts, written out term by term, for MFU and sampling bounds.

Conventions (PaLM appendix B / MaxText): a matmul of an (a x b) by a (b x c) matrix is
2abc FLOPs; the backward pass costs twice the forward pass, so training costs 3x forward.
Per token of a transformer with N matmul parameters (q, k, v, out, MLP in, MLP out; no
embeddings, norms or softmax) training costs 6N; attention adds QK^T and AV, 4 * L * E
forward per token and layer over a sequence of L, i.e. 12 * layers * L^2 * E per example
for training with bidirectional attention and half of that with causal attention (the
masked half is not computed by a causal kernel, so it is not counted as useful work).
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

# Dense bf16 peak FLOP/s and HBM bytes/s per device, by substring of jax's device_kind.
# (H100 SXM: 989 TFLOP/s dense bf16, 3.35 TB/s; H200: same FLOPs, 4.8 TB/s.)
DEVICE_PEAKS = (
    ("H200", 989e12, 4.8e12),
    ("H100", 989e12, 3.35e12),
    ("A100", 312e12, 2.0e12),
    ("TPU v6 lite", 918e12, 1.64e12),
    ("TPU v5 lite", 197e12, 0.82e12),
    ("TPU v5e", 197e12, 0.82e12),
    ("TPU v5p", 459e12, 2.76e12),
    ("TPU v5", 459e12, 2.76e12),
    ("TPU v4", 275e12, 1.2e12),
)


def device_peaks(device_kind: str) -> tuple[float, float] | None:
  """(peak FLOP/s, HBM bytes/s) for a jax device_kind, or None when unknown (e.g. CPU)."""
  for name, flops, bandwidth in DEVICE_PEAKS:
    if name.lower() in device_kind.lower():
      return flops, bandwidth
  return None


@dataclasses.dataclass(frozen=True)
class FlopCount:
  """FLOPs of one example, as named terms with their formula written out."""
  terms: tuple[tuple[str, float, str], ...]  # (name, flops, formula with the numbers in)

  @property
  def total(self) -> float:
    return float(sum(flops for _, flops, _ in self.terms))

  def scaled(self, factor: float, note: str) -> "FlopCount":
    return FlopCount(tuple((name, flops * factor, f"{note} x [{formula}]")
                           for name, flops, formula in self.terms))

  def describe(self) -> str:
    width = max([13] + [len(name) for name, _, _ in self.terms])
    lines = [f"  {name:<{width}} {flops / 1e9:12.3f} GFLOP = {formula}"
             for name, flops, formula in self.terms]
    return "\n".join(lines + [f"  {'total':<{width}} {self.total / 1e9:12.3f} GFLOP"])


@dataclasses.dataclass(frozen=True)
class Transformer:
  """The shape of a transformer stack for FLOP counting."""
  num_layers: int
  emb_dim: int
  mlp_dim: int
  seq_len: int  # Tokens per example through the stack.
  causal: bool
  # Output projections: (positions scored, vocabulary size) per head.
  heads: Sequence[tuple[int, int]] = ()

  @property
  def matmul_params(self) -> int:
    """N: q, k, v, out (4 E^2) and MLP in, out (2 E M) per layer."""
    e, m = self.emb_dim, self.mlp_dim
    return self.num_layers * (4 * e * e + 2 * e * m)

  @property
  def head_params_x_positions(self) -> int:
    return sum(self.emb_dim * positions * vocab for positions, vocab in self.heads)

  def train_flops(self) -> FlopCount:
    """Forward + backward FLOPs of one example."""
    n, length, e, layers = self.matmul_params, self.seq_len, self.emb_dim, self.num_layers
    kind, factor = ("causal", 6) if self.causal else ("bidirectional", 12)
    heads = " + ".join(f"{p} x {v}" for p, v in self.heads) or "0"
    return FlopCount((
        ("6N x L", 6.0 * n * length,
         f"6 x N x L, N = {layers} x (4 x {e}^2 + 2 x {e} x {self.mlp_dim}) = {n:,}, "
         f"L = {length}"),
        ("attention", float(factor * layers * length ** 2 * e),
         f"{factor} x {layers} layers x {length}^2 x {e} ({kind})"),
        ("output heads", 6.0 * self.head_params_x_positions,
         f"6 x {e} x ({heads}) (positions x vocab)"),
    ))

  def forward_flops(self) -> FlopCount:
    """Forward FLOPs of one example (a third of training)."""
    return self.train_flops().scaled(1 / 3, "1/3")


@dataclasses.dataclass(frozen=True)
class EncoderDecoder:
  """An encoder stack and a decoder stack whose every layer also cross-attends to the
  encoder output: the decoder's N adds 4 E^2 per layer (cross q, k, v, out; k and v run
  over the Le encoder positions, q and out over the Ld decoder ones), and its attention
  adds 12 x layers x Ld x Le x E (every decoder query against every encoder key)."""
  encoder: Transformer
  decoder: Transformer

  def train_flops(self) -> FlopCount:
    enc, dec = self.encoder.train_flops(), self.decoder.train_flops()
    e, layers = self.decoder.emb_dim, self.decoder.num_layers
    le, ld = self.encoder.seq_len, self.decoder.seq_len
    cross_proj = 6.0 * layers * 2 * e * e * (le + ld)
    cross_attn = 12.0 * layers * ld * le * e
    return FlopCount(
        tuple((f"encoder {name}", f, formula) for name, f, formula in enc.terms
              if name != "output heads") +
        tuple((f"decoder {name}", f, formula) for name, f, formula in dec.terms) +
        (("cross proj", cross_proj,
          f"6 x {layers} layers x 2 x {e}^2 x ({le} + {ld}) (k, v over the encoder; q, out "
          "over the decoder)"),
         ("cross attn", cross_attn, f"12 x {layers} layers x {ld} x {le} x {e}")))


def mfu(flops_per_step: float, step_seconds: float, num_devices: int, peak_per_device: float
        ) -> float:
  """Model FLOPs utilization: achieved FLOP/s over the devices' summed peak."""
  return flops_per_step / step_seconds / (num_devices * peak_per_device)
