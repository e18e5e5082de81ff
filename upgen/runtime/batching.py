"""Fixed-size batches for jitted functions over host arrays of any length."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np


def run_batched(fn: Callable[..., jax.Array], params: Any, arrays: Sequence[np.ndarray],
                 batch_size: int, seed: int) -> np.ndarray:
  """fn(params, *batch_arrays, rng) over rows in fixed-size batches (the last padded by
  repeating its final row, so fn compiles once); batch i gets fold_in(key(seed), i)."""
  n = len(arrays[0])
  rows = min(batch_size, n)
  rng = jax.random.key(seed)
  out = []
  for i, start in enumerate(range(0, n, batch_size)):
    stop = min(start + batch_size, n)
    padded = [jnp.asarray(np.concatenate([x[start:stop], np.repeat(x[stop - 1:stop],
                                                                   rows - (stop - start), 0)]))
              for x in arrays]
    out.append(np.asarray(fn(params, *padded, jax.random.fold_in(rng, i)))[:stop - start])
  return np.concatenate(out, axis=0)

