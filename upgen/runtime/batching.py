"""Fixed-size batches for jitted functions over host arrays of any length: one helper for
every caller that pads (the inference API, the image tokenizer, the CLIP scorer, the demo)."""
from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np


def run_batched(fn: Callable[..., jax.Array], params: Any, arrays: Sequence[np.ndarray],
               batch_size: int, seed: Optional[int] = None, *, fixed: bool = False,
               sharding: Optional[jax.sharding.Sharding] = None) -> np.ndarray:
  """fn(params, *batch_arrays[, rng]) over the arrays' rows in batches of `batch_size`, the
  last padded by repeating its final row so that fn compiles once: to `batch_size` rows when
  `fixed` (one program for any number of rows, as a server wants), else to
  min(batch_size, rows). With a seed, batch i gets fold_in(key(seed), i) as its last
  argument; without one, fn takes no rng. `sharding` places each batch (its rows split over
  the sharding's devices; batch_size a multiple of their number). Returns the rows'
  outputs, concatenated."""
  put = jnp.asarray if sharding is None else functools.partial(jax.device_put, device=sharding)
  n = len(arrays[0])
  rows = batch_size if fixed else min(batch_size, n)
  rng = None if seed is None else jax.random.key(seed)
  out = []
  for i, start in enumerate(range(0, n, batch_size)):
    stop = min(start + batch_size, n)
    padded = [put(np.concatenate([x[start:stop], np.repeat(x[stop - 1:stop],
                                                                   rows - (stop - start), 0)]))
              for x in arrays]
    extra = () if rng is None else (jax.random.fold_in(rng, i),)
    out.append(np.asarray(fn(params, *padded, *extra))[:stop - start])
  return np.concatenate(out, axis=0)
