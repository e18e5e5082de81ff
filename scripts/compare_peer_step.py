"""UPGen-L's train step against the plain Flax peer's, as XLA compiles them for the CPU (#33).

  python scripts/compare_peer_step.py [--layers 24] [--batch 64] [--variants all] [--json F]

Both steps are lowered on abstract arguments (ShapeDtypeStructs) and compiled, never run, at
the anchor's shape (docs/performance.md: 24 x 1024, 16 heads, 256 image + 64 text positions,
both vocabularies 32768, batch 64, bf16 compute, float32 parameters). XLA's account of each:
cost_analysis() FLOPs and bytes accessed, the op histogram of the optimized HLO (the
instructions that run: the entry computation and the loop and branch bodies it calls, not
the insides of fusions), memory_analysis() sizes, and the bytes of the arrays the step keeps
(parameters, optimizer state, EMA).

Then each thing upgen's step does beyond the peer's is switched off alone (`VARIANTS`: a
config switch where one exists, else a patch applied while tracing) and its delta measured,
and all of them together, so every row of the table is a measured difference. The peer is
../shared/peers/peer_mfu_jax.py's model and step, copied (that file trains at import); the
CPU has no cuDNN, so both run XLA's attention, and the row "cuDNN's mask form" emulates what
upgen's cuDNN path adds (the key mask materialized as a bf16 bias, layers.fused_attention).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import os
import sys
from typing import Any, Callable, Optional
from unittest import mock

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# LLVM at -O0 compiles about 1.5x faster; XLA's HLO, its cost and memory analyses are the
# same (checked at one layer: every figure equal).
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = " ".join(
      [os.environ.get("XLA_FLAGS", ""), "--xla_backend_optimization_level=0"]).strip()

from flax import linen as nn  # pylint: disable=g-import-not-at-top
import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
import optax  # pylint: disable=g-import-not-at-top

from configs import upgen as upgen_config  # pylint: disable=g-import-not-at-top
from upgen.models import head_loss  # pylint: disable=g-import-not-at-top
from upgen.models import layers  # pylint: disable=g-import-not-at-top
from upgen.models import upgen as upgen_model  # pylint: disable=g-import-not-at-top
from upgen.runtime import checkpoint  # pylint: disable=g-import-not-at-top
from upgen.runtime import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
from upgen.runtime import optimizer  # pylint: disable=g-import-not-at-top
from upgen.runtime import state as state_lib  # pylint: disable=g-import-not-at-top
from upgen.runtime.state import ema_decay_at  # pylint: disable=g-import-not-at-top
from upgen.runtime.state import update_ema  # pylint: disable=g-import-not-at-top
from upgen.tools import bench  # pylint: disable=g-import-not-at-top
from upgen.tools import hlo_account  # pylint: disable=g-import-not-at-top
from upgen.train import step as step_lib  # pylint: disable=g-import-not-at-top

# The anchor's shape (peer_mfu_jax.py: D, H, S, V; upgen: 16 x 16 image grid + 64 text).
WIDTH, HEADS, IMAGE_GRID, TEXT_LEN, VOCAB = 1024, 16, 16, 64, 32768
OPS = hlo_account.OPS


# ----------------------------------------------------------------------------- the peer
class PeerBlock(nn.Module):
  """peer_mfu_jax.py's Block, attention on `impl`."""
  impl: str

  @nn.compact
  def __call__(self, x):
    b, t, _ = x.shape
    h = nn.LayerNorm(dtype=jnp.bfloat16)(x)
    qkv = nn.Dense(3 * WIDTH, dtype=jnp.bfloat16)(h).reshape(b, t, 3, HEADS, WIDTH // HEADS)
    a = jax.nn.dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2],
                                     implementation=self.impl)
    x = x + nn.Dense(WIDTH, dtype=jnp.bfloat16)(a.reshape(b, t, WIDTH))
    h = nn.Dense(4 * WIDTH, dtype=jnp.bfloat16)(nn.LayerNorm(dtype=jnp.bfloat16)(x))
    return x + nn.Dense(WIDTH, dtype=jnp.bfloat16)(nn.gelu(h))


class PeerModel(nn.Module):
  """peer_mfu_jax.py's Model with `num_layers` blocks."""
  num_layers: int
  seq_len: int
  impl: str = "xla"

  @nn.compact
  def __call__(self, tok):
    pos = self.param("pos", nn.initializers.zeros, (1, self.seq_len, WIDTH))
    x = nn.Embed(VOCAB, WIDTH, dtype=jnp.bfloat16)(tok) + pos.astype(jnp.bfloat16)
    for _ in range(self.num_layers):
      x = PeerBlock(self.impl)(x)
    return nn.Dense(VOCAB, dtype=jnp.bfloat16)(nn.LayerNorm(dtype=jnp.bfloat16)(x))


def peer_program(num_layers: int, batch: int):
  """(jitted step, abstract args, kept arrays) of peer_mfu_jax.py at these sizes."""
  seq = IMAGE_GRID ** 2 + TEXT_LEN
  m, tx = PeerModel(num_layers, seq), optax.adamw(1e-4)
  tok = jax.ShapeDtypeStruct((batch, seq), jnp.int32)
  params = jax.eval_shape(m.init, jax.random.key(3), tok)
  opt = jax.eval_shape(tx.init, params)

  def step(params, opt, tok, tgt, mask):
    def lossf(p):
      logits = m.apply(p, tok).astype(jnp.float32)
      ce = optax.softmax_cross_entropy_with_integer_labels(logits, tgt)
      return (ce * mask).sum() / mask.sum()
    loss, g = jax.value_and_grad(lossf)(params)
    u, opt = tx.update(g, opt, params)
    return optax.apply_updates(params, u), opt, loss

  args = (params, opt, tok, tok, jax.ShapeDtypeStruct((batch, seq), jnp.float32))
  return jax.jit(step, donate_argnums=(0, 1)), args, {"params": params, "optimizer": opt}


# ------------------------------------------------------------------------------- upgen
@dataclasses.dataclass(frozen=True)
class Variant:
  """One thing switched off: config fields, patches applied while tracing, step flags."""
  name: str
  what: str
  config: tuple[tuple[str, Any], ...] = ()
  patches: tuple[Callable[[], contextlib.AbstractContextManager], ...] = ()
  step: tuple[tuple[str, bool], ...] = ()
  peer_optimizer: bool = False
  # Its cost is upgen minus this variant, or, for a form that adds work, this variant minus
  # the variant named here.
  adds_to: str = ""


def large_config(num_layers: int, batch: int, changes=()):
  config = upgen_config.get_config("large")
  config.model.num_layers = num_layers
  config.model.attention_impl = "xla"  # No cuDNN on the CPU (the peer runs XLA's too).
  config.data.batch_size = batch
  config.data.text_seq_len = TEXT_LEN
  config.update_from_flattened_dict(dict(changes))
  return config


def train_step(state, batch, rng, *, loss_fn, ema_decay=0.0, grad_norm=True, guard=True):
  """upgen/train/step.py's train_step (grad_accum_steps=1, as the large configs train),
  with its step-level parts switchable; all on, it compiles to the same program (checked by
  `--check`)."""
  step_rng = jax.random.fold_in(rng, state.step)
  grad_fn = jax.value_and_grad(functools.partial(loss_fn, train=True, step=state.step),
                               has_aux=True)
  (loss, aux), grads = grad_fn(state.params, batch, step_rng)
  metrics = dict(aux)
  finite = jnp.isfinite(loss)
  given = {}  # Without the step's norm the clip computes its own (optimizer.py).
  if grad_norm:
    metrics["grad_norm"] = given["grad_norm"] = optax.tree.norm(grads)
    finite = finite & jnp.isfinite(metrics["grad_norm"])

  def update():
    updated = state.apply_gradients(grads, **given)
    ema = state.ema_params
    if ema is not None:
      ema = update_ema(ema, updated.params, ema_decay_at(ema_decay, state.step))
    return updated.params, updated.opt_state, ema

  if guard:
    params, opt_state, ema = jax.lax.cond(
        finite, update, lambda: (state.params, state.opt_state, state.ema_params))
  else:
    params, opt_state, ema = update()
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                            ema_params=ema)
  metrics.update(loss=loss, finite=finite.astype(jnp.float32))
  return new_state, metrics


def upgen_program(num_layers: int, batch: int, variant: Optional[Variant] = None,
                  real_step: bool = False):
  """(jitted step, abstract args, kept arrays) of upgen's step as `upgen bench train` builds
  it (bench.lower_train), with `variant` switched off; `real_step` uses step.py's own."""
  variant = variant or Variant("upgen", "")
  config = large_config(num_layers, batch, variant.config)
  setup = bench.setup_for(config, IMAGE_GRID, VOCAB, VOCAB)
  mesh = mesh_lib.make_mesh(config.mesh)
  tx = (optax.adamw(1e-4) if variant.peer_optimizer
        else optimizer.for_setup(setup, config.optim, config.train.steps))
  with _patches(variant):  # Initialization runs the model too.
    abstract, _ = state_lib.abstract_state(setup, tx, mesh, config.mesh,
                                           checkpoint.uses_ema(config))
  sharding = mesh_lib.batch_sharding(mesh, config.mesh)
  batch_args = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sharding)
                for k, v in setup.dummy_batch(batch).items()}
  ema = float(config.optim.get("ema_decay", 0.0) or 0.0)
  fn = (functools.partial(step_lib.train_step, loss_fn=setup.loss_fn(), ema_decay=ema)
        if real_step else
        functools.partial(train_step, loss_fn=setup.loss_fn(), ema_decay=ema,
                          **dict(variant.step)))
  kept = {"params": abstract.params, "optimizer": abstract.opt_state,
          "ema": abstract.ema_params}

  @contextlib.contextmanager
  def traced():
    with mesh_lib.activate(mesh, config.mesh), _patches(variant):
      yield

  return jax.jit(fn, donate_argnums=0), (abstract, batch_args, jax.random.key(0)), kept, traced


# ---------------------------------------------------------------------------- patches
@contextlib.contextmanager
def _patches(variant: Variant):
  with contextlib.ExitStack() as stack:
    for patch in variant.patches:
      stack.enter_context(patch())
    yield


def _patched(module, name: str, value):
  """module.name = value while the context lasts (unittest.mock's patch.object)."""
  return mock.patch.object(module, name, value)


def no_key_mask():
  return _patched(layers, "key_mask", lambda valid_BxS: None)


def cudnn_mask_form():
  """What layers.fused_attention hands cuDNN, on XLA's attention: the key mask broadcast to
  B x 1 x T x S and turned into a bf16 additive bias (jax's combine_bias_and_mask), kept as
  an operand (an optimization barrier stands for the custom call that reads it)."""
  def attention(q, k, v, mask, *, causal, implementation="cudnn"):
    del implementation
    b, t = q.shape[:2]
    mask = jnp.broadcast_to(jnp.asarray(mask, bool), (b, mask.shape[1], t, k.shape[1]))
    bias = jnp.where(mask, jnp.asarray(0, q.dtype), jnp.finfo(q.dtype).min / 2)
    bias = jax.lax.optimization_barrier(bias)
    return jax.nn.dot_product_attention(q, k, v, bias=bias, is_causal=causal,
                                        implementation="xla")
  return _patched(layers, "fused_attention", attention)


def mask_select():
  """jax's own mask: a select over the scores (and another in the backward pass), as upgen's
  XLA path gave the key mask before #33 (now layers.xla_attention's bias)."""
  def attention(q, k, v, mask, *, causal, implementation=None):
    return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=causal,
                                        implementation=implementation)
  return _patched(layers, "xla_attention", attention)


def no_accuracy():
  def logits_ce(x_NxE, head, labels_N, vocab_size, dtype):
    logits = (jnp.dot(x_NxE.astype(dtype), head["kernel"].astype(dtype))
              + head["bias"].astype(dtype))[:, :vocab_size].astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels_N)
    return ce, jnp.zeros(labels_N.shape, bool)
  return _patched(head_loss, "_logits_ce", logits_ce)


def masks_from_batch():
  """The peer's form: the masks come in with the batch (here: a function of the tokens)."""
  def sample_masks(rng, batch, settings, text_pads="masked"):
    del rng, settings, text_pads
    return batch["image_tokens"] % 2 == 0, batch["text_tokens"] % 2 == 0
  return _patched(upgen_model, "sample_masks", sample_masks)


def _features(params, batch, masks, dropout_rng, model, train):
  cfg = model.config
  image, text = (jnp.asarray(batch[k], jnp.int32) for k in ("image_tokens", "text_tokens"))
  has_image, has_text = (jnp.asarray(batch[k], bool) for k in ("has_image", "has_text"))
  text_valid = upgen_model.text_slots(batch["text_mask"], cfg.text_pads) & has_text[:, None]
  m_image = jnp.asarray(masks[0], bool) & has_image[:, None]
  m_text = jnp.asarray(masks[1], bool) & text_valid
  xi, xt = model.apply({"params": params}, jnp.where(m_image, cfg.image_mask_id, image),
                       jnp.where(m_text, cfg.text_mask_id, text), text_valid, has_image,
                       train=train, features=True, rngs={"dropout": dropout_rng})
  return image, text, m_image, m_text, xi, xt


def one_loss_term():
  """The four weighted means (paired / unpaired x image / text) -> one masked mean over both
  heads' masked tokens; the metrics otherwise as masked_loss returns them."""
  def masked_loss(params, batch, masks, dropout_rng, *, model, settings, train):
    cfg = model.config
    image, text, m_image, m_text, xi, xt = _features(params, batch, masks, dropout_rng, model,
                                                     train)
    ce = lambda x, name, y, w, v: head_loss.masked_cross_entropy(
        x, head_loss.unembed_params(params, name), y, w, vocab_size=v, dtype=cfg.dtype,
        capacity=settings.logits_capacity, chunks=settings.logits_chunks)
    ce_i, ok_i = ce(xi, "image_head", image, m_image, cfg.image_vocab_size)
    ce_t, ok_t = ce(xt, "text_head", text, m_text, cfg.text_vocab_size)
    n_i, n_t = jnp.sum(m_image).astype(jnp.float32), jnp.sum(m_text).astype(jnp.float32)
    total = (jnp.sum(ce_i) + jnp.sum(ce_t)) / jnp.maximum(n_i + n_t, 1.0)
    mean = upgen_model._masked_mean  # pylint: disable=protected-access
    return total, dict(loss=total, acc_image=mean(ok_i, m_image), acc_text=mean(ok_t, m_text),
                       num_masked_image=n_i, num_masked_text=n_t)
  return _patched(upgen_model, "masked_loss", masked_loss)


def peer_loss():
  """The peer's loss: one head (the image head's parameters) over all 320 positions, one
  masked mean, the loss as the only metric. The text head stays in the state (zero
  gradients), so the optimizer's work is unchanged."""
  def masked_loss(params, batch, masks, dropout_rng, *, model, settings, train):
    del settings
    cfg = model.config
    image, text, m_image, m_text, xi, xt = _features(params, batch, masks, dropout_rng, model,
                                                     train)
    head = head_loss.unembed_params(params, "image_head")
    x = jnp.concatenate([xi, xt], axis=1).astype(cfg.dtype)
    logits = (x @ head["kernel"].astype(cfg.dtype) + head["bias"].astype(cfg.dtype))
    ce = optax.softmax_cross_entropy_with_integer_labels(
        logits[..., :VOCAB].astype(jnp.float32), jnp.concatenate([image, text], axis=1))
    where = jnp.concatenate([m_image, m_text], axis=1).astype(jnp.float32)
    total = jnp.sum(ce * where) / jnp.sum(where)
    return total, {}
  return _patched(upgen_model, "masked_loss", masked_loss)


VARIANTS = (
    Variant("dropout", "dropout 0.1 on residual branches and embeddings -> 0 "
            "(config.model.dropout_rate)", config=(("model.dropout_rate", 0.0),)),
    Variant("key_mask", "key-padding mask B x 1 x 1 x S in every attention -> none",
            patches=(no_key_mask,)),
    Variant("mask_select", "the key mask as a bias -> as jax's select (before #33)",
            patches=(mask_select,), adds_to="upgen"),
    Variant("cudnn_mask", "cuDNN's mask form (emulated), against no mask: the mask as a "
            "B x 1 x T x S bf16 bias operand", config=(("model.attention_impl", "cudnn"),),
            patches=(cudnn_mask_form,), adds_to="key_mask"),
    Variant("accuracy", "argmax accuracies of both heads -> none", patches=(no_accuracy,)),
    Variant("mask_draw", "random mask draw (uniform ratios, two argsorts per row) -> masks "
            "from the batch", patches=(masks_from_batch,)),
    Variant("loss_terms", "four weighted loss means -> one masked mean", patches=(one_loss_term,)),
    Variant("heads", "two heads (image 256 x 32768, text 64 x 32768) + 4 terms + metrics -> "
            "the peer's one head over 320 positions, loss only", patches=(peer_loss,)),
    Variant("grad_norm", "gradient norm metric -> none (the guard checks the loss only, the "
            "clip computes its own)", step=(("grad_norm", False),)),
    Variant("guard", "non-finite guard (lax.cond around the update) -> update always",
            step=(("guard", False),)),
    Variant("clip", "clip by global norm 1.0 -> none (config.optim.grad_clip)",
            config=(("optim.grad_clip", 0.0),)),
    Variant("optimizer", "upgen's optimizer (clip, warm-up + cosine, decay mask) -> the peer's "
            "optax.adamw(1e-4)", peer_optimizer=True),
)


def all_off() -> Variant:
  """Every switch of VARIANTS off at once (the additions, cuDNN's mask form and jax's mask
  select, excepted)."""
  # "heads" includes loss_terms and accuracy, "optimizer" includes clip.
  chosen = [v for v in VARIANTS
            if v.name not in ("cudnn_mask", "mask_select", "loss_terms", "accuracy", "clip")]
  return Variant("all_off", "all of the above off (the peer's loss and optimizer)",
                 config=sum((v.config for v in chosen), ()),
                 patches=sum((v.patches for v in chosen), ()),
                 step=sum((v.step for v in chosen), ()), peer_optimizer=True)


# ---------------------------------------------------------------------------- account
def account(jitted, args, kept, traced=contextlib.nullcontext) -> dict[str, Any]:
  out = hlo_account.account(jitted, args, kept, traced)
  out.setdefault("kept_ema_bytes", 0)
  return out


# ------------------------------------------------------------------------------ table
ROWS = (("flops", "GFLOP", 1e9), ("bytes_accessed", "GB accessed", 1e9),
        ("transcendentals", "G transcendentals", 1e9), ("temp_bytes", "temp GB", 1e9),
        ("argument_bytes", "argument GB", 1e9), ("output_bytes", "output GB", 1e9),
        ("kept_params_bytes", "params GB", 1e9), ("kept_optimizer_bytes", "optimizer GB", 1e9),
        ("kept_ema_bytes", "EMA GB", 1e9), ("copy_bytes", "copied GB", 1e9)) + tuple(
            (f"op_{op}", op, 1) for op in OPS)


_fmt = hlo_account.fmt


def print_table(peer: dict, up: dict, deltas: list[tuple[Variant, dict]],
                results: dict[str, dict]) -> None:
  print("\n| | peer | upgen | upgen - peer |")
  print("| --- | --- | --- | --- |")
  for key, label, scale in ROWS:
    a, b = peer.get(key, 0), up.get(key, 0)
    print(f"| {label} | {_fmt(a, scale)} | {_fmt(b, scale)} | {_fmt(b - a, scale)} |")
  if not deltas:
    return
  keys = ("flops", "bytes_accessed", "temp_bytes", "copy_bytes", "op_kernels", "op_fusion",
          "op_copy", "op_transpose", "op_broadcast", "op_reduce", "op_rng", "op_sort")
  scale = dict((r[0], r[2]) for r in ROWS)
  print("\nWhat each costs: upgen minus upgen with it switched off alone (negative: it saves).\n")
  print("| switched off | GFLOP | GB accessed | temp GB | copied GB | kernels | fusion | copy "
        "| transpose | broadcast | reduce | rng | sort |")
  print("| --- |" + " --- |" * len(keys))
  for variant, result in deltas:
    if variant.adds_to and variant.adds_to not in results:
      continue
    minus = results[variant.adds_to] if variant.adds_to else result
    plus = result if variant.adds_to else up
    cells = [_fmt(plus[k] - minus[k], scale[k]) for k in keys]
    print(f"| {variant.name}: {variant.what} | " + " | ".join(cells) + " |")
  for variant, result in deltas:
    if variant.name == "all_off":
      print(f"\nupgen, all off, minus the peer: "
            f"{(result['flops'] - peer['flops']) / 1e9:,.3f} GFLOP, "
            f"{(result['bytes_accessed'] - peer['bytes_accessed']) / 1e9:,.3f} GB accessed, "
            f"{result['op_kernels'] - peer['op_kernels']:+,} kernels")


def main(argv: Optional[list[str]] = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--layers", type=int, default=24)
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--variants", default="all",
                 help="comma-separated VARIANTS names and all_off, 'all' or 'none'")
  p.add_argument("--check", action="store_true",
                 help="also compile step.py's train_step and require this script's copy to "
                 "match it")
  p.add_argument("--json", default="", help="append one JSON line per program here")
  args = p.parse_args(argv)
  names = {v.name: v for v in VARIANTS + (all_off(),)}
  chosen = (list(names) if args.variants == "all" else [] if args.variants == "none"
            else args.variants.split(","))
  for name in chosen:
    if name not in names:
      p.error(f"unknown variant {name!r}; choose from {', '.join(names)}")
  print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}; {args.layers} layers x "
        f"{WIDTH}, batch {args.batch}, {IMAGE_GRID ** 2} + {TEXT_LEN} positions, vocab {VOCAB}",
        flush=True)
  results = {}

  def run(name, jitted, fargs, kept, traced=contextlib.nullcontext):
    results[name] = account(jitted, fargs, kept, traced)
    print(f"  {name}: compiled in {results[name]['compile_s']:.1f} s", flush=True)
    if args.json:
      with open(args.json, "a") as f:
        f.write(json.dumps({"program": name, "layers": args.layers, "batch": args.batch,
                            "jax": jax.__version__, **results[name]}) + "\n")

  jitted, fargs, kept = peer_program(args.layers, args.batch)
  run("peer", jitted, fargs, kept)
  run("upgen", *upgen_program(args.layers, args.batch))
  if args.check:
    run("upgen_step_py", *upgen_program(args.layers, args.batch, real_step=True))
    same = all(results["upgen"][k] == results["upgen_step_py"][k]
               for k in ("flops", "bytes_accessed", "op_kernels", "temp_bytes"))
    print(f"  this script's train_step against step.py's: {'same' if same else 'DIFFERENT'}")
    if not same:
      return 1
  for name in chosen:
    run(name, *upgen_program(args.layers, args.batch, names[name]))
  print_table(results["peer"], results["upgen"], [(names[n], results[n]) for n in chosen],
              results)
  return 0


if __name__ == "__main__":
  sys.exit(main())
