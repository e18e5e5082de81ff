"""PowerSGD over a replica axis: replicas simulated in one process by jax.vmap(axis_name=...),
whose psum / pmean are the collectives' semantics; one multidevice test runs the same
reduction under jax.shard_map on a 4-device (replica=2, data=2) mesh."""
import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from upgen.runtime import powersgd

AXIS = "replica"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _on_replicas(tree, k):
  """The same value on each of k replicas (a leading axis of size k)."""
  return jax.tree.map(lambda x: jnp.broadcast_to(x, (k,) + x.shape), tree)


@functools.lru_cache(maxsize=None)
def _reduce_fn(rank, eps=powersgd.EPS):
  reduce = functools.partial(powersgd.reduce, axis_name=AXIS, rank=rank, eps=eps)
  return jax.jit(jax.vmap(reduce, axis_name=AXIS))


def _one_replica(tree):
  return jax.tree.map(lambda x: x[0], tree)


def _normal(seed, shape):
  return jax.random.normal(jax.random.PRNGKey(seed), shape, jnp.float32)


def test_compressible_follows_n_plus_m_times_r_below_n_times_m():
  assert powersgd.compressible((64, 32), 4)  # 96 * 4 < 2048
  assert powersgd.compressible((3, 3, 4, 8), 2)  # (3, 96): 99 * 2 < 288
  assert not powersgd.compressible((3, 3, 4, 8), 3)  # 99 * 3 >= 288
  assert not powersgd.compressible((4, 4), 2)  # 8 * 2 = 16: not below
  assert not powersgd.compressible((128,), 1)
  assert not powersgd.compressible((), 1)
  assert not powersgd.compressible((64, 32), 0)  # rank 0: off


@pytest.mark.parametrize("shape_NxM", [(6, 10), (10, 6)])
def test_full_rank_is_the_exact_mean(shape_NxM):
  k, (n, m) = 3, shape_NxM
  ms_KxNxM = _normal(0, (k, n, m))
  q_MxR = powersgd.init_q((n, m), min(n, m), jax.random.PRNGKey(7))

  def one_round(m_NxM):
    ds, qs = powersgd.reduce_matrices([m_NxM], [q_MxR], AXIS)
    return ds[0], qs[0]

  d_KxNxM, _ = jax.jit(jax.vmap(one_round, axis_name=AXIS))(ms_KxNxM)
  mean_NxM = np.asarray(ms_KxNxM).mean(0)
  for d_NxM in np.asarray(d_KxNxM):
    np.testing.assert_allclose(d_NxM, mean_NxM, atol=2e-5)
  # Each replica's residual is its own M minus the mean; over the replicas they cancel.
  error_KxNxM = np.asarray(ms_KxNxM) - np.asarray(d_KxNxM)
  np.testing.assert_allclose(error_KxNxM.mean(0), 0.0, atol=2e-5)


def test_rank_one_mean_is_recovered_at_rank_one_and_after_warm_start():
  k, n, m = 4, 12, 20
  noise_KxNxM = _normal(1, (k, n, m))
  noise_KxNxM = noise_KxNxM - noise_KxNxM.mean(0)  # Each replica full rank, the mean rank 1.
  mean_NxM = jnp.outer(_normal(2, (n,)), _normal(3, (m,)))
  grads = {"w": mean_NxM + noise_KxNxM, "b": _normal(4, (k, m))}
  state = _on_replicas(powersgd.init_state(_one_replica(grads), rank=1), k)
  assert state.q["w"].shape == (k, m, 1)
  for _ in range(2):  # The first step, then one from the warm-started Q and the errors.
    out, state = _reduce_fn(1)(grads, state)
    for w_NxM in np.asarray(out["w"]):
      np.testing.assert_allclose(w_NxM, mean_NxM, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(state.error["w"]).mean(0), 0.0, atol=1e-4)


def test_error_feedback_carries_the_residual_and_the_sum_catches_up():
  k, n, m, steps = 2, 16, 24, 40
  grads = {"w": _normal(5, (k, n, m))}
  mean_NxM = np.asarray(grads["w"]).mean(0)
  state = _on_replicas(powersgd.init_state(_one_replica(grads), rank=1), k)
  sent_NxM = np.zeros((n, m), np.float32)
  gaps = []
  for step in range(1, steps + 1):
    old_error, old_q = np.asarray(state.error["w"]), np.asarray(state.q["w"])
    out, state = _reduce_fn(1)(grads, state)
    reduced_NxM = np.asarray(out["w"][0])
    # The residual is exactly M - P Q^T, P and Q recomputed here from their definitions.
    m_KxNxM = np.asarray(grads["w"]) + old_error
    q_MxR = np.asarray(powersgd.orthogonalize(jnp.asarray(old_q[0])))
    p_NxR = np.asarray(powersgd.orthogonalize(jnp.asarray((m_KxNxM @ q_MxR).sum(0))))
    new_q_MxR = (np.swapaxes(m_KxNxM, 1, 2) @ p_NxR).mean(0)
    np.testing.assert_allclose(np.asarray(state.q["w"][0]), new_q_MxR, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(reduced_NxM, p_NxR @ new_q_MxR.T, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(state.error["w"]), m_KxNxM - reduced_NxM,
                               rtol=1e-6, atol=1e-6)
    # What was sent plus the mean error left is all the gradient so far.
    sent_NxM += reduced_NxM
    np.testing.assert_allclose(sent_NxM + np.asarray(state.error["w"]).mean(0),
                               step * mean_NxM, rtol=1e-4, atol=1e-4)
    gaps.append(np.linalg.norm(step * mean_NxM - sent_NxM) / np.linalg.norm(step * mean_NxM))
  # Rank 1 of a 16 x 24 matrix sends a sliver per step, yet the running sum converges.
  assert gaps[0] > 0.5, gaps[0]
  assert gaps[-1] < 0.25 * gaps[0] and gaps[-1] < 0.5 * gaps[steps // 2], gaps


def test_vectors_scalars_and_small_matrices_are_exact_means():
  k = 3
  grads = {"bias": _normal(6, (k, 32)), "scale": _normal(7, (k,)),
           "small": _normal(8, (k, 4, 4)), "big": _normal(9, (k, 32, 32))}
  state = _on_replicas(powersgd.init_state(_one_replica(grads), rank=2), k)
  assert sorted(state.q) == ["big"]  # (4 + 4) * 2 = 16 is not below 16: sent whole.
  out, _ = _reduce_fn(2)(grads, state)
  for name in ("bias", "scale", "small"):
    for replica in range(k):
      np.testing.assert_allclose(out[name][replica], np.asarray(grads[name]).mean(0),
                                 rtol=1e-6, atol=1e-7)
  assert not np.allclose(out["big"][0], np.asarray(grads["big"]).mean(0), atol=1e-3)


def test_q_is_the_same_on_every_replica_and_set_by_the_seed():
  params = {"a": jnp.zeros((16, 24)), "b": jnp.zeros((20, 24)), "v": jnp.zeros((24,))}
  one = powersgd.init_state(params, rank=2, seed=3)
  again = powersgd.init_state(jax.tree.map(jnp.ones_like, params), rank=2, seed=3)
  other = powersgd.init_state(params, rank=2, seed=4)
  for name in ("a", "b"):
    np.testing.assert_array_equal(one.q[name], again.q[name])  # Seed, not values.
    assert not np.allclose(one.q[name], other.q[name])
  assert not np.allclose(one.q["a"], one.q["b"])  # Each leaf its own draw.
  abstract = powersgd.init_state(jax.eval_shape(lambda: params), rank=2, seed=3)
  np.testing.assert_array_equal(abstract.q["a"], one.q["a"])
  # After a step the replicas, fed different gradients, still hold one Q and one gradient.
  k = 3
  grads = {"a": _normal(10, (k, 16, 24)), "b": _normal(11, (k, 20, 24)),
           "v": _normal(12, (k, 24))}
  out, state = _reduce_fn(2)(grads, _on_replicas(one, k))
  for tree in (state.q, out):
    for x in jax.tree.leaves(tree):
      for replica in range(1, k):
        np.testing.assert_array_equal(x[replica], x[0])
  assert not np.array_equal(state.error["a"][1], state.error["a"][0])  # Errors are local.


def test_bfloat16_error_buffers_stay_bfloat16():
  k = 2
  grads = {"w": _normal(13, (k, 16, 24)), "w16": _normal(14, (k, 16, 24)).astype(jnp.bfloat16)}
  params = _one_replica(grads)
  state16 = _on_replicas(powersgd.init_state(params, 2, error_dtype=jnp.bfloat16), k)
  state32 = _on_replicas(powersgd.init_state(params, 2), k)
  for _ in range(3):
    out16, state16 = _reduce_fn(2)(grads, state16)
    out32, state32 = _reduce_fn(2)(grads, state32)
  assert {x.dtype for x in state16.error.values()} == {jnp.dtype(jnp.bfloat16)}
  assert {x.dtype for x in state16.q.values()} == {jnp.dtype(jnp.float32)}
  assert out16["w"].dtype == jnp.float32 and out16["w16"].dtype == jnp.bfloat16
  scale = float(jnp.abs(out32["w"]).max())
  np.testing.assert_allclose(out16["w"], out32["w"], atol=0.03 * scale)
  np.testing.assert_allclose(state16.error["w"].astype(jnp.float32), state32.error["w"],
                             atol=0.03 * scale)


def test_traffic_counts_factors_against_whole_gradients():
  params = {"kernel": jnp.zeros((64, 32)), "bias": jnp.zeros((32,)),
            "conv": jnp.zeros((3, 3, 4, 8))}  # As a matrix (3, 96).
  full = (64 * 32 + 32 + 3 * 3 * 4 * 8) * 4
  rank2 = powersgd.traffic(params, 2)
  assert rank2.full_bytes == full == 9472
  assert rank2.powersgd_bytes == ((64 + 32) * 2 + 32 + (3 + 96) * 2) * 4 == 1688
  assert rank2.ratio == pytest.approx(9472 / 1688)
  rank4 = powersgd.traffic(jax.eval_shape(lambda: params), 4)  # The conv is sent whole.
  assert rank4.powersgd_bytes == ((64 + 32) * 4 + 32 + 288) * 4
  assert powersgd.traffic(params, 0).ratio == 1.0


def test_state_that_does_not_match_the_rank_is_refused():
  grads = {"w": jnp.zeros((2, 16, 24))}
  state = _on_replicas(powersgd.init_state(_one_replica(grads), rank=2), 2)
  with pytest.raises(ValueError, match=r"state holds \['w'\] but the gradients at rank 0"):
    _reduce_fn(0)(grads, state)


_SHARD_MAP_SCRIPT = r"""
import functools, json
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import PartitionSpec as P
from upgen.runtime import mesh as mesh_lib, powersgd

k, rank = 2, 2
mesh = jax.make_mesh((k, 2, 1, 1), mesh_lib.MESH_AXES)
key = jax.random.PRNGKey(0)
grads = {"w": jax.random.normal(key, (k, 16, 24)), "b": jax.random.normal(key, (k, 24))}
state = powersgd.init_state(jax.tree.map(lambda x: x[0], grads), rank)
state_k = jax.tree.map(lambda x: jnp.broadcast_to(x, (k,) + x.shape), state)

def per_replica(grads, state):
  squeeze = lambda t: jax.tree.map(lambda x: x[0], t)
  out, new = powersgd.reduce(squeeze(grads), squeeze(state), "replica", rank)
  return out, new._replace(error=jax.tree.map(lambda x: x[None], new.error))

specs = powersgd.PowerSGDState(error={"w": P("replica")}, q={"w": P("replica")})
out_specs = ({"w": P(), "b": P()}, specs._replace(q={"w": P()}))
fn = jax.jit(jax.shard_map(per_replica, mesh=mesh, in_specs=(P("replica"), specs),
                           out_specs=out_specs, axis_names={"replica"}))
steps = []
for _ in range(2):
  out, state_k_next = fn(grads, state_k)
  on_host = jax.tree.map(np.asarray, (grads, state_k))
  ref, ref_state = jax.vmap(functools.partial(powersgd.reduce, axis_name="replica", rank=rank),
                            axis_name="replica")(*on_host)
  steps.append({
      "grad": max(float(jnp.abs(out[n] - ref[n][0]).max()) for n in out),
      "error": float(jnp.abs(state_k_next.error["w"] - ref_state.error["w"]).max()),
      "q": float(jnp.abs(state_k_next.q["w"] - ref_state.q["w"][0]).max()),
      "b_mean": float(jnp.abs(out["b"] - grads["b"].mean(0)).max())})
  state_k = state_k_next._replace(q=jax.tree.map(
      lambda x: jnp.broadcast_to(x, (k,) + x.shape), state_k_next.q))
print(json.dumps({"devices": jax.device_count(), "steps": steps}))
"""


@pytest.mark.multidevice
def test_shard_map_over_replica_matches_vmap():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  out = subprocess.run([sys.executable, "-c", _SHARD_MAP_SCRIPT], check=True, cwd=ROOT,
                       capture_output=True, text=True, env=env)
  result = json.loads(out.stdout.strip().splitlines()[-1])
  assert result["devices"] == 4
  for step in result["steps"]:
    assert max(step.values()) < 1e-5, result
