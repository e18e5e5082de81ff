"""UPGen-L's text->image sampler against the plain-JAX MaskGIT peer's, as XLA compiles them
for the CPU (#33 item 3).

  python scripts/compare_peer_sample.py [--layers 24] [--batch 16] [--variants all] [--json F]

Both samplers are lowered on abstract arguments and compiled, never run, at the peer's shape
(../shared/peers/peer_sample_jax.py: 24 x 1024, 16 heads, 256 image + 64 text positions,
vocabulary 32768, 12 MaskGIT steps, classifier-free guidance) and upgen's (configs/upgen.py:
large, bf16 compute, float32 parameters, scanned layers as timed on the H200 in
docs/performance.md "Sampling", guidance 2.0). The peer's file defines its model at module
level and runs its benchmark when imported, so its model and `sample` are re-created here,
line for line, with the number of layers a parameter and XLA's attention in place of cuDNN's
(the CPU has none; upgen runs XLA's too).

XLA's account (upgen/tools/hlo_account.py): cost_analysis() FLOPs and bytes accessed, the
op histogram of the optimized HLO, memory_analysis() sizes. XLA's cost analysis counts a
while loop's body once, so the figures are one decoding step plus what runs once per call;
with scanned layers one layer stands for all of them (compare FLOPs and bytes with
--variants unrolled, where every layer is counted).

Then each way upgen differs is switched alone (`VARIANTS`: a config change or a patch applied
while tracing) and its delta measured: the forms upgen's sampler had before #33 item 3 (one
2B forward with a key-masked [PAD] caption, parameters cast at every use, two argsorts per
remask) and the peer's (bf16-stored parameters, unrolled layers).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import math
import os
import sys
from typing import Any, Callable, Optional
from unittest import mock

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# LLVM at -O0 compiles faster; XLA's HLO and its analyses are the same (compare_peer_step.py).
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = " ".join(
      [os.environ.get("XLA_FLAGS", ""), "--xla_backend_optimization_level=0"]).strip()

from flax import linen as nn  # pylint: disable=g-import-not-at-top
import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

from configs import upgen as upgen_config  # pylint: disable=g-import-not-at-top
from upgen.sampling import maskgit  # pylint: disable=g-import-not-at-top
from upgen.sampling import upgen_sampler  # pylint: disable=g-import-not-at-top
from upgen.tools import bench  # pylint: disable=g-import-not-at-top
from upgen.tools import hlo_account  # pylint: disable=g-import-not-at-top

# peer_sample_jax.py: D, H, NI, NT, V, STEPS (the CFG scale 3.0 = upgen's 1 + 2.0).
D, H, NI, NT, V, STEPS = 1024, 16, 256, 64, 32768, 12
MASK = V - 1


# ----------------------------------------------------------------------------- the peer
class PeerBlock(nn.Module):
  """peer_sample_jax.py's Block (attention on `impl`)."""
  impl: str = "xla"

  @nn.compact
  def __call__(s, x):  # pylint: disable=no-self-argument
    b, t, _ = x.shape
    qkv = nn.Dense(3 * D, dtype=jnp.bfloat16)(nn.LayerNorm(dtype=jnp.bfloat16)(x)).reshape(
        b, t, 3, H, D // H)
    a = jax.nn.dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2],
                                     implementation=s.impl)
    x = x + nn.Dense(D, dtype=jnp.bfloat16)(a.reshape(b, t, D))
    return x + nn.Dense(D, dtype=jnp.bfloat16)(nn.gelu(nn.Dense(4 * D, dtype=jnp.bfloat16)(
        nn.LayerNorm(dtype=jnp.bfloat16)(x))))


class PeerModel(nn.Module):
  """peer_sample_jax.py's Model with `num_layers` blocks (no position embedding, as there)."""
  num_layers: int

  @nn.compact
  def __call__(s, tok):  # pylint: disable=no-self-argument
    x = nn.Embed(V, D, dtype=jnp.bfloat16)(tok)
    for _ in range(s.num_layers):
      x = PeerBlock()(x)
    return nn.Dense(V, dtype=jnp.bfloat16)(nn.LayerNorm(dtype=jnp.bfloat16)(x[:, :NI]))


def peer_sample_fn(m: PeerModel, guidance: bool = True) -> Callable:
  """peer_sample_jax.py's `sample` for model `m` (`guidance` False: the cond rows only)."""
  def sample(params, text, rng):
    B = text.shape[0]; img = jnp.full((B, NI), MASK, jnp.int32)  # pylint: disable=invalid-name,multiple-statements

    def body(i, c):
      img, rng = c; rng, k1, k2 = jax.random.split(rng, 3)  # pylint: disable=multiple-statements
      if guidance:
        tok = jnp.concatenate([jnp.concatenate([img, text], 1),
                               jnp.concatenate([img, jnp.full_like(text, MASK)], 1)], 0)
        lg = m.apply(params, tok).astype(jnp.float32); lg = lg[:B] + 3.0 * (lg[:B] - lg[B:])  # pylint: disable=multiple-statements
      else:
        lg = m.apply(params, jnp.concatenate([img, text], 1)).astype(jnp.float32)
      s = jax.random.categorical(k1, lg); unk = img == MASK  # pylint: disable=multiple-statements
      s = jnp.where(unk, s, img)
      conf = jnp.take_along_axis(jax.nn.log_softmax(lg), s[..., None], -1)[..., 0]
      conf = conf + 4.5 * (1 - (i + 1) / STEPS) * jax.random.gumbel(k2, conf.shape)
      conf = jnp.where(unk, conf, jnp.inf)
      n_mask = jnp.floor(NI * jnp.cos(math.pi / 2 * (i + 1) / STEPS)).astype(jnp.int32)
      thr = jnp.sort(conf, -1)[:, n_mask][:, None]
      return jnp.where(conf < thr, MASK, s), rng
    return jax.lax.fori_loop(0, STEPS, body, (img, rng))[0]
  return sample


def peer_program(num_layers: int, batch: int, guidance: bool = True):
  """(jitted sample, abstract args, kept arrays) of peer_sample_jax.py at these sizes."""
  m = PeerModel(num_layers)
  params = jax.eval_shape(m.init, jax.random.PRNGKey(0), jnp.zeros((1, NI + NT), jnp.int32))
  params = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, jnp.bfloat16), params)
  args = (params, jax.ShapeDtypeStruct((batch, NT), jnp.int32),
          jax.ShapeDtypeStruct((2,), jnp.uint32))
  return jax.jit(peer_sample_fn(m, guidance)), args, {"params": params}


# ------------------------------------------------------------------------------- upgen
@dataclasses.dataclass(frozen=True)
class Variant:
  """One way upgen's sampler differs, switched: config fields, patches while tracing,
  parameters stored in bf16."""
  name: str
  what: str
  config: tuple[tuple[str, Any], ...] = ()
  patches: tuple[Callable[[], contextlib.AbstractContextManager], ...] = ()
  bf16_params: bool = False


def large_config(num_layers: int, batch: int, changes=()):
  config = upgen_config.get_config("large")
  config.model.num_layers = num_layers
  config.model.attention_impl = "xla"  # No cuDNN on the CPU (the peer's runs XLA's too).
  config.model.scan_layers = True  # As timed on the H200 (docs/performance.md "Sampling").
  config.data.batch_size = batch
  config.data.text_seq_len = NT
  config.update_from_flattened_dict(dict(changes))
  return config


def upgen_program(num_layers: int, batch: int, variant: Optional[Variant] = None):
  """(jitted sample, abstract args, kept arrays, tracing context) of upgen's text->image
  sampler as `upgen bench sample` builds it (bench.lower_sample), with `variant`."""
  variant = variant or Variant("upgen", "")
  config = large_config(num_layers, batch, variant.config)
  setup = bench.setup_for(config, int(math.isqrt(NI)), V, V)
  init = functools.partial(setup.family.init_variables, setup.model)
  params = nn.unbox(jax.eval_shape(init, jax.random.key(0), setup.dummy_batch(1))["params"])
  if variant.bf16_params:
    params = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, jnp.bfloat16), params)
  captions = setup.family.reads.captions(setup.dummy_batch(batch))
  args = (params, *(jax.ShapeDtypeStruct(c.shape, c.dtype) for c in captions),
          jax.random.key(0))

  @contextlib.contextmanager
  def traced():
    jax.clear_caches()  # The sampler's inner jit would reuse a trace made without the patches.
    with contextlib.ExitStack() as stack:
      for patch in variant.patches:
        stack.enter_context(patch())
      yield

  return jax.jit(setup.bind("sample_images")), args, {"params": params}, traced


# ---------------------------------------------------------------------------- patches
def _patched(module, name: str, value):
  """module.name = value while the context lasts (unittest.mock's patch.object)."""
  return mock.patch.object(module, name, value)


def one_2b_forward():
  """Before #33 item 3: cond and uncond as one forward over 2B rows of Li + Lt positions,
  the uncond caption all [PAD] with every text key masked out of attention."""
  def guided_logits(params, model, image_BxLi, text_BxLt, text_mask_BxLt):
    both = upgen_sampler._apply(  # pylint: disable=protected-access
        params, model, jnp.concatenate([image_BxLi, image_BxLi]),
        jnp.concatenate([text_BxLt, jnp.full_like(text_BxLt, model.config.text_pad_id)]),
        jnp.concatenate([text_mask_BxLt, jnp.zeros_like(text_mask_BxLt)]))[0]
    return jnp.split(both, 2, axis=0)
  return _patched(upgen_sampler, "guided_logits", guided_logits)


def cast_at_every_use():
  """Before #33 item 3: float32 parameters in, each Dense / Embed casting its own."""
  return _patched(upgen_sampler, "compute_dtype_params", lambda params, dtype: params)


def two_argsorts():
  """Before #33 item 3: the remask rank as argsort(argsort(confidence))."""
  return _patched(maskgit, "rank_BxL", lambda v: jnp.argsort(
      jnp.argsort(v, axis=-1, stable=True), axis=-1, stable=True))


VARIANTS = (
    Variant("one_2b_forward", "uncond stream: the image alone (B x Li) -> [PAD] caption, "
            "key-masked, in one 2B x (Li + Lt) forward (before)", patches=(one_2b_forward,)),
    Variant("cast_per_use", "kernels cast to bf16 once per call -> at every use (before)",
            patches=(cast_at_every_use,)),
    Variant("two_argsorts", "remask rank: one sort + scatter -> two argsorts (before)",
            patches=(two_argsorts,)),
    Variant("before", "all three: the sampler as timed on the H200",
            patches=(one_2b_forward, cast_at_every_use, two_argsorts)),
    Variant("unrolled", "scanned layers -> unrolled (config.model.scan_layers=false; every "
            "layer counted)", config=(("model.scan_layers", False),)),
    Variant("unrolled_before", "unrolled, the sampler before #33 item 3",
            config=(("model.scan_layers", False),),
            patches=(one_2b_forward, cast_at_every_use, two_argsorts)),
    Variant("bf16_params", "float32-stored parameters -> all bf16 (the peer's; norms and "
            "biases rounded too, so not the same samples)", bf16_params=True),
    Variant("no_guidance", "guidance 2.0 -> 0 (one stream; the peer's row: its cond rows only)",
            config=(("sample.guidance_scale", 0.0),)),
)


# ------------------------------------------------------------------------------ table
ROWS = (("flops", "GFLOP", 1e9), ("bytes_accessed", "GB accessed", 1e9),
        ("transcendentals", "G transcendentals", 1e9), ("temp_bytes", "temp GB", 1e9),
        ("argument_bytes", "argument GB", 1e9), ("kept_params_bytes", "params GB", 1e9),
        ("copy_bytes", "copied GB", 1e9)) + tuple(
            (f"op_{op}", op, 1) for op in hlo_account.OPS)
DELTA_KEYS = ("flops", "bytes_accessed", "temp_bytes", "copy_bytes", "op_kernels", "op_fusion",
              "op_while", "op_sort", "op_rng", "op_copy", "op_transpose", "op_convert")


def print_table(results: dict[str, dict], chosen: list[Variant]) -> None:
  fmt, scale = hlo_account.fmt, {r[0]: r[2] for r in ROWS}
  cols = [c for c in ("peer", "upgen", "before", "unrolled", "unrolled_before")
          if c in results]
  print("\n| | " + " | ".join(cols) + " | upgen - peer |")
  print("| --- |" + " --- |" * (len(cols) + 1))
  for key, label, s in ROWS:
    cells = [fmt(results[c].get(key, 0), s) for c in cols]
    diff = fmt(results["upgen"].get(key, 0) - results["peer"].get(key, 0), s)
    print(f"| {label} | " + " | ".join(cells) + f" | {diff} |")
  print("\nEach switched alone: the variant minus upgen (positive: the variant costs more).\n")
  print("| variant | " + " | ".join(k.removeprefix("op_") for k in DELTA_KEYS) + " |")
  print("| --- |" + " --- |" * len(DELTA_KEYS))
  for v in chosen:
    base = results["peer_no_guidance" if v.name == "no_guidance" else "upgen"]
    if v.name == "no_guidance":  # Against the peer's own unguided sampler.
      cells = [fmt(results[v.name][k] - base[k], scale[k]) for k in DELTA_KEYS]
      print("| no_guidance: upgen unguided minus the peer unguided | " + " | ".join(cells)
            + " |")
      continue
    cells = [fmt(results[v.name][k] - base[k], scale[k]) for k in DELTA_KEYS]
    print(f"| {v.name}: {v.what} | " + " | ".join(cells) + " |")


def main(argv: Optional[list[str]] = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--layers", type=int, default=24)
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--variants", default="all",
                 help="comma-separated VARIANTS names, 'all' or 'none'")
  p.add_argument("--json", default="", help="append one JSON line per program here")
  args = p.parse_args(argv)
  names = {v.name: v for v in VARIANTS}
  chosen = (list(names) if args.variants == "all" else [] if args.variants == "none"
            else args.variants.split(","))
  for name in chosen:
    if name not in names:
      p.error(f"unknown variant {name!r}; choose from {', '.join(names)}")
  print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}; {args.layers} layers x {D}, "
        f"batch {args.batch}, {NI} + {NT} positions, vocab {V}, {STEPS} steps", flush=True)
  results = {}

  def run(name, jitted, fargs, kept, traced=contextlib.nullcontext):
    results[name] = hlo_account.account(jitted, fargs, kept, traced)
    print(f"  {name}: compiled in {results[name]['compile_s']:.1f} s", flush=True)
    if args.json:
      with open(args.json, "a") as f:
        f.write(json.dumps({"program": name, "layers": args.layers, "batch": args.batch,
                            "jax": jax.__version__, **results[name]}) + "\n")

  run("peer", *peer_program(args.layers, args.batch))
  if "no_guidance" in chosen:
    run("peer_no_guidance", *peer_program(args.layers, args.batch, guidance=False))
  run("upgen", *upgen_program(args.layers, args.batch))
  for name in chosen:
    run(name, *upgen_program(args.layers, args.batch, names[name]))
  print_table(results, [names[n] for n in chosen])
  return 0


if __name__ == "__main__":
  sys.exit(main())
