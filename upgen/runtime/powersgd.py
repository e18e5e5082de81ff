"""PowerSGD: a low-rank gradient all-reduce over the slow ("replica") mesh axis.

Pure functions to call inside a `jax.shard_map` (or a `jax.vmap` with an axis name) over
the axis the slices are joined by; they follow PyTorch's `powerSGD_hook` (Vogels et al.,
2019). Each gradient viewed as a matrix M (shape[0], prod(rest)) with (n + m) r < n m is
sent as two factors instead of itself:

  M = grad + error                      # error feedback: last step's residual, per replica
  Q = orthogonalize(Q)                  # Q warm-started from the last step
  P = all-reduce(M Q)                   # n x r, summed (the scale goes in orthogonalize)
  P = orthogonalize(P)                  # each matrix on its own, Gram-Schmidt
  Q = all-reduce(M^T P) / world         # m x r, the mean
  grad = P Q^T ; error = M - P Q^T ; Q kept for the next step

so (n + m) r numbers cross the slow axis instead of n m. Vectors, scalars and small matrices
are all-reduced whole (the mean). The reduction inside a slice is not this module's: it is
XLA's, exact, before these functions see the gradients.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp

Array = jax.Array
EPS = 1e-8  # Added to column norms: a zero column stays zero instead of dividing by zero.
FACTOR_DTYPE = jnp.float32  # P, Q and the matmuls that make them.


class PowerSGDState(NamedTuple):
  """Per compressible gradient leaf, keyed by `leaf_name`: the error buffer (the leaf's
  shape, this replica's residual) and Q (m x r, the same on every replica). As in PyTorch
  the residual is this replica's M minus the shared P Q^T, so besides the compression error
  it carries the replica's own departure from the mean; only the replicas' mean error moves
  the result (P and Q depend on the mean M alone), and those departures cancel in it."""
  error: dict[str, Array]
  q: dict[str, Array]


class Traffic(NamedTuple):
  """Bytes one replica puts into the all-reduces over the slow axis per step."""
  full_bytes: int  # Every gradient all-reduced whole.
  powersgd_bytes: int  # P and Q of the compressed matrices, the other leaves whole.

  @property
  def ratio(self) -> float:
    return self.full_bytes / self.powersgd_bytes


def matrix_shape(shape: Sequence[int]) -> tuple[int, int]:
  """(n, m): the gradient as a matrix, its first axis against the rest (PyTorch's view)."""
  return int(shape[0]), math.prod(int(d) for d in shape[1:])


def compressible(shape: Sequence[int], rank: int) -> bool:
  """Whether a gradient of `shape` is sent as rank-`rank` factors: a matrix (or higher) whose
  factors are smaller than itself, (n + m) r < n m. Rank 0 is PowerSGD off."""
  if rank < 1 or len(shape) < 2:
    return False
  n, m = matrix_shape(shape)
  return (n + m) * rank < n * m


def leaf_name(path: Sequence[Any]) -> str:
  """"params/dense/kernel" for a tree path: the key of the leaf's state."""
  parts = [getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))) for k in path]
  return "/".join(str(p) for p in parts)


def init_q(shape: Sequence[int], rank: int, key: Array) -> Array:
  """Q_MxR drawn from a standard normal; r = min(n, m, rank) as in PyTorch."""
  n, m = matrix_shape(shape)
  return jax.random.normal(key, (m, min(n, m, rank)), FACTOR_DTYPE)


def init_state(params: Any, rank: int, seed: int = 0,
               error_dtype: Any = jnp.float32) -> PowerSGDState:
  """Zero errors and a Q per compressible leaf of `params` (arrays or ShapeDtypeStructs).
  Q of leaf i (in tree order) comes from fold_in(PRNGKey(seed), i): every process that
  calls this with the same seed holds the same Q."""
  key = jax.random.PRNGKey(seed)
  error, q = {}, {}
  for i, (path, leaf) in enumerate(jax.tree_util.tree_flatten_with_path(params)[0]):
    if compressible(leaf.shape, rank):
      name = leaf_name(path)
      error[name] = jnp.zeros(leaf.shape, error_dtype)
      q[name] = init_q(leaf.shape, rank, jax.random.fold_in(key, i))
  return PowerSGDState(error=error, q=q)


def orthogonalize(p_NxR: Array, eps: float = EPS) -> Array:
  """Orthonormal columns by modified Gram-Schmidt (PyTorch's `_orthogonalize`): each column
  divided by its norm + eps, then its projection taken off the later columns."""
  r = p_NxR.shape[1]
  later = jnp.arange(r)

  def column(i, p_NxR):
    col_N = p_NxR[:, i]
    col_N = col_N / (jnp.linalg.norm(col_N) + eps)
    p_NxR = p_NxR.at[:, i].set(col_N)
    proj_R = jnp.where(later > i, col_N @ p_NxR, 0.0)
    return p_NxR - col_N[:, None] * proj_R[None, :]

  return jax.lax.fori_loop(0, r, column, p_NxR)


def reduce_matrices(ms_NxM: Sequence[Array], qs_MxR: Sequence[Array], axis_name: str,
                    eps: float = EPS) -> tuple[list[Array], list[Array]]:
  """One PowerSGD round for matrices M (this replica's, error already added) and their
  warm-started Q: (P Q^T per matrix, the same on every replica; the new Q). All Ps go in
  one all-reduce, all Qs in another, as the hook's buckets do."""
  world = jax.lax.psum(1, axis_name)
  qs_MxR = [orthogonalize(q, eps) for q in qs_MxR]
  ps_NxR = jax.lax.psum([m @ q for m, q in zip(ms_NxM, qs_MxR)], axis_name)
  ps_NxR = [orthogonalize(p, eps) for p in ps_NxR]
  qs_MxR = jax.lax.psum([m.T @ p for m, p in zip(ms_NxM, ps_NxR)], axis_name)
  qs_MxR = [q / world for q in qs_MxR]
  return [p @ q.T for p, q in zip(ps_NxR, qs_MxR)], qs_MxR


def reduce(grads: Any, state: PowerSGDState, axis_name: str, rank: int,
           eps: float = EPS) -> tuple[Any, PowerSGDState]:
  """(the gradients reduced over `axis_name`, the new state). Compressible leaves go
  through `reduce_matrices` with error feedback; the others are the exact mean. Reduced
  gradients keep their dtypes, errors the state's dtype."""
  flat, treedef = jax.tree_util.tree_flatten_with_path(grads)
  names = [leaf_name(path) for path, _ in flat]
  leaves = [g for _, g in flat]
  packed = [i for i, g in enumerate(leaves) if compressible(g.shape, rank)]
  if sorted(names[i] for i in packed) != sorted(state.q):
    raise ValueError(f"PowerSGD state holds {sorted(state.q)} but the gradients at rank "
                     f"{rank} compress {sorted(names[i] for i in packed)}")
  whole = [i for i in range(len(leaves)) if i not in set(packed)]
  out = list(leaves)
  for i, g in zip(whole, jax.lax.pmean([leaves[i] for i in whole], axis_name)):
    out[i] = g
  ms_NxM = [(leaves[i].astype(FACTOR_DTYPE) + state.error[names[i]].astype(FACTOR_DTYPE))
            .reshape(matrix_shape(leaves[i].shape)) for i in packed]
  ds_NxM, qs_MxR = reduce_matrices(ms_NxM, [state.q[names[i]] for i in packed], axis_name, eps)
  error, q = {}, {}
  for i, m_NxM, d_NxM, q_MxR in zip(packed, ms_NxM, ds_NxM, qs_MxR):
    shape, name = leaves[i].shape, names[i]
    out[i] = d_NxM.reshape(shape).astype(leaves[i].dtype)
    error[name] = (m_NxM - d_NxM).reshape(shape).astype(state.error[name].dtype)
    q[name] = q_MxR
  return jax.tree_util.tree_unflatten(treedef, out), PowerSGDState(error=error, q=q)


def traffic(params: Any, rank: int) -> Traffic:
  """Bytes per replica per step into the slow axis's all-reduces, for gradients shaped as
  `params` (arrays or ShapeDtypeStructs): whole leaves at their dtype's size, compressed
  ones as (n + m) r float32 factors. The all-reduce operands, not the wire bytes of an
  algorithm (a ring sends about twice its operand)."""
  full = powersgd = 0
  for leaf in jax.tree.leaves(params):
    size = math.prod(leaf.shape) * jnp.dtype(leaf.dtype).itemsize
    full += size
    if compressible(leaf.shape, rank):
      n, m = matrix_shape(leaf.shape)
      powersgd += (n + m) * rank * jnp.dtype(FACTOR_DTYPE).itemsize
    else:
      powersgd += size
  return Traffic(full_bytes=full, powersgd_bytes=powersgd)
