"""upgen/train/step.py: one gradient norm serves the metric, the non-finite guard and the
optimizer's clip (#33), with optax.clip_by_global_norm's updates."""
import jax
import numpy as np
import optax
import pytest

from tests import token_data
from upgen import families
from upgen.runtime import mesh as mesh_lib
from upgen.runtime import optimizer
from upgen.runtime import state as state_lib
from upgen.train import step as step_lib


def test_clip_takes_the_given_norm_and_clips_as_optax():
  grads = {"a": np.arange(6.0, dtype=np.float32).reshape(2, 3), "b": np.float32(-4.0)}
  norm = optax.tree.norm(grads)  # sqrt(55 + 16)
  for max_norm in (1.0, 100.0):  # Clipped, and left alone.
    ref, _ = optax.clip_by_global_norm(max_norm).update(grads, optax.EmptyState())
    clip = optimizer.clip_by_global_norm(max_norm)
    for given in ({}, {"grad_norm": norm}):
      out, _ = clip.update(grads, clip.init(grads), **given)
      for x, y in zip(jax.tree.leaves(out), jax.tree.leaves(ref)):
        np.testing.assert_array_equal(x, y)
  # The given norm is the one used (the step's; here a different one, to see it is read).
  clip = optimizer.clip_by_global_norm(float(norm))
  out, _ = clip.update(grads, clip.init(grads), grad_norm=2 * norm)
  np.testing.assert_allclose(out["a"], grads["a"] / 2, rtol=1e-6)


def _upgen(**optim):
  config = token_data.small_config("upgen")
  config.optim.warmup_steps = 0
  # eps 1: Adam's first update is about g / (|g| + 1) ~ g, so clipping shows in the params.
  config.optim.update(eps=1.0, **optim)
  spec = families.get_family("upgen").reads.synthetic_spec(
      config.data, image_grid=4, image_vocab=16, text_vocab=32)
  return config, families.build(config, spec)


def _steps(config, setup, tx, accum, n=2):
  mesh = mesh_lib.make_mesh(config.mesh)
  state = state_lib.create_state(setup, tx, mesh, config.mesh, jax.random.key(0))
  batch = setup.dummy_batch(4)
  batch["text_mask"][:, 3:] = False  # Padded captions, an image-only and a text-only row.
  batch["has_text"][1] = False
  batch["has_image"][2] = False
  step = jax.jit(lambda s, b: step_lib.train_step(s, b, jax.random.key(1), loss_fn=setup.loss_fn(),
                                                  grad_accum_steps=accum))
  out = []
  with mesh_lib.activate(mesh, config.mesh):
    for _ in range(n):
      state, metrics = step(state, batch)
      out.append({k: float(v) for k, v in metrics.items()})
  return state.params, out


@pytest.mark.parametrize("grad_clip,accum", [(1e-2, 1), (1e-2, 2), (0.0, 1)])
def test_step_clips_with_its_norm_as_optax_did(grad_clip, accum):
  """The optimizer as it was (optax.clip_by_global_norm computing its own norm, then AdamW)
  and as it is (the clip reading the step's norm) give the same losses and parameters over
  two steps. Equal to float tolerance, not bit for bit: XLA may fuse the norm's reduction
  differently once it has two users."""
  config, setup = _upgen(grad_clip=grad_clip)
  unclipped = config.optim.copy_and_resolve_references()
  unclipped.grad_clip = 0.0
  was = optimizer.make_optimizer(unclipped, config.train.steps)
  if grad_clip:
    was = optax.chain(optax.clip_by_global_norm(grad_clip), was)
  params, metrics = _steps(config, setup, optimizer.make_optimizer(config.optim,
                                                                   config.train.steps), accum)
  ref_params, ref_metrics = _steps(config, setup, was, accum)
  for m, r in zip(metrics, ref_metrics):
    assert set(m) == set(r) and "param_norm" not in m
    for k in m:
      assert m[k] == pytest.approx(r[k], rel=1e-6, abs=1e-7), k
  for x, y in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)):
    np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)
  if grad_clip:  # The clip was in play: without it the parameters move further.
    assert metrics[0]["grad_norm"] > 10 * grad_clip
    free, _ = _steps(config, setup, optimizer.make_optimizer(unclipped, config.train.steps),
                     accum)
    moved = lambda p: sum(float(np.abs(np.asarray(a) - np.asarray(b)).sum())
                          for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(ref_params)))
    assert moved(free) > 1e-3
