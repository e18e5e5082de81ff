"""XLA's account of a compiled program, for comparing two programs op by op (#33): the
FLOPs and bytes accessed of cost_analysis(), the sizes of memory_analysis(), and a histogram
of the ops that run in the optimized HLO. scripts/compare_peer_step.py and
scripts/compare_peer_sample.py print it against their peers.
"""
from __future__ import annotations

import collections
import contextlib
import re
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

OPS = ("kernels", "fusion", "dot", "copy", "transpose", "broadcast", "reduce", "convert",
       "select", "rng", "while", "conditional", "sort", "scatter", "custom-call")

_FREE = ("parameter", "constant", "get-tuple-element", "tuple", "bitcast")
_ITEM_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2, "f32": 4,
               "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8}
_RANDOM = re.compile(r'op_name="[^"]*(threefry|_uniform|_bernoulli|random_bits)')


def computations(hlo: str) -> dict[str, list[str]]:
  """The instruction lines of each computation of an HLO module's text ("ENTRY": the entry)."""
  comps, name = {}, None
  for line in hlo.splitlines():
    head = re.match(r"^(ENTRY )?%?([\w.\-]+) .*\{\s*$", line)
    if head and not line.startswith(" "):
      name = "ENTRY" if head.group(1) else head.group(2)
      comps[name] = []
    elif name and line.startswith("  "):
      comps[name].append(line)
  return comps


def op_histogram(hlo: str) -> collections.Counter:
  """Opcodes of the instructions that run: the entry computation, the bodies, conditions
  and branches of its loops, conditionals and calls, and the bodies of its fusions (not
  reducers' scalar lambdas). "kernels" counts the instructions outside fusions that do work
  (not parameters, constants, tuples, bitcasts), "copy_bytes" what the copies among them
  write, "rng" the rng ops and the while loops of jax's threefry hash (on the CPU the
  random bits are such a loop). A loop body counts once, however many times it runs."""
  comps = computations(hlo)
  counts, todo, seen = collections.Counter(), [("ENTRY", False)], set()
  while todo:
    name, fused = todo.pop()
    if name in seen or name not in comps:
      continue
    seen.add(name)
    for line in comps[name]:
      m = re.match(r"\s*(?:ROOT )?%?[\w.\-]+ = .*? ([a-z][a-z0-9\-]*)\(", line)
      if not m:
        continue
      op = m.group(1)
      counts[op] += 1
      if not fused and op not in _FREE:
        counts["kernels"] += 1
      if not fused and op == "copy":
        shape = re.match(r"\s*(?:ROOT )?%?[\w.\-]+ = (\w+)\[([\d,]*)\]", line)
        if shape:
          dims = [int(d) for d in shape.group(2).split(",") if d]
          counts["copy_bytes"] += _ITEM_BYTES.get(shape.group(1), 4) * int(np.prod(dims))
      if op.startswith("rng") or (op == "while" and _RANDOM.search(line)):
        counts["rng"] += 1
      if op == "fusion":
        todo.extend((ref, True) for ref in re.findall(r"calls=%?([\w.\-]+)", line))
      if op in ("while", "conditional", "call"):
        for ref in re.findall(r"(?:body|condition|to_apply|true_computation|"
                              r"false_computation)=%?([\w.\-]+)", line):
          todo.append((ref, fused))
        for group in re.findall(r"branch_computations=\{([^}]*)\}", line):
          todo.extend((x.strip().lstrip("%"), fused) for x in group.split(","))
  return counts


def nbytes(tree) -> int:
  """Bytes of the arrays (or ShapeDtypeStructs) of a pytree."""
  return int(sum(x.size * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))


def account(jitted, args, kept, traced=contextlib.nullcontext) -> dict[str, Any]:
  """Lowers `jitted` on `args` (under the context `traced()`), compiles it, and returns
  XLA's figures: flops, bytes_accessed, transcendentals, the memory_analysis sizes, op_<op>
  counts of `op_histogram` for OPS, copy_bytes, compile_s, and kept_<name>_bytes for each
  pytree of `kept` (the arrays the program keeps: parameters, optimizer state)."""
  start = time.perf_counter()
  with traced():
    lowered = jitted.lower(*args)
  compiled = lowered.compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  mem = compiled.memory_analysis()
  hist = op_histogram(compiled.as_text())
  out = {"flops": cost.get("flops", 0.0), "bytes_accessed": cost.get("bytes accessed", 0.0),
         "transcendentals": cost.get("transcendentals", 0.0),
         "argument_bytes": mem.argument_size_in_bytes, "output_bytes": mem.output_size_in_bytes,
         "temp_bytes": mem.temp_size_in_bytes, "alias_bytes": mem.alias_size_in_bytes,
         "compile_s": time.perf_counter() - start}
  out.update({f"op_{op}": hist.get(op, 0) for op in OPS})
  out["copy_bytes"] = hist.get("copy_bytes", 0)
  out.update({f"kept_{k}_bytes": nbytes(v) for k, v in kept.items()})
  return out


def fmt(x: float, scale: float) -> str:
  """A table cell: x / scale with three decimals, or a whole count where scale is 1."""
  return f"{x / scale:,.3f}" if scale != 1 else f"{int(x):,}"
