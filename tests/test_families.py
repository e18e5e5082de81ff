"""The family contract, run over every family found under upgen/models/ and every
architecture a family's module lists in ARCHITECTURES (no list to keep):
build against a synthetic data spec, dummy batch -> sharded init -> jitted loss -> one train
step -> every sampler the family has, with the shapes the contract promises. Then the same
families on an 8-device (data 2, fsdp 2, tensor 2) mesh through the real trainer (previews
on) and `upgen sample` (tests/mesh_contract_job.py, started as the module starts)."""
import importlib
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import token_data
from upgen import families
from upgen.data.spec import DataSpec
from upgen.runtime import mesh as mesh_lib
from upgen.runtime import optimizer
from upgen.train import preview as preview_lib
from upgen.runtime import state as state_lib
from upgen.train import step as step_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GRID, IMAGE_VOCAB, TEXT_VOCAB = 4, 16, 32
NAMES = families.names()


def architectures(name):
  """The architectures `config.model.architecture` chooses among (None: the family has one)."""
  module = importlib.import_module(f"upgen.models.{name}")
  return sorted(getattr(module, "ARCHITECTURES", {})) or [None]


CASES = [f"{name}:{arch}" if arch else name for name in NAMES for arch in architectures(name)]
SAMPLERS = ("sample_images", "inpaint", "unconditional_images", "caption_images")


@pytest.fixture(scope="module", autouse=True)
def mesh_job(request, tmp_path_factory):
  """The 8-device run, in a subprocess that compiles on the second core meanwhile."""
  if not any(item.name == "test_every_family_trains_previews_and_samples_on_8_devices"
             for item in request.session.items):
    yield None
    return
  out = tmp_path_factory.mktemp("mesh_contract")
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=" ".join([
      os.environ.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=8",
      "--xla_backend_optimization_level=0"]))
  with open(out / "out", "w") as stdout, open(out / "err", "w") as stderr:
    proc = subprocess.Popen([sys.executable, "-m", "tests.mesh_contract_job", str(out)],
                            cwd=ROOT, stdout=stdout, stderr=stderr, env=env)
  yield proc, out
  if proc.poll() is None:
    proc.kill()
    proc.wait()


def draws(family) -> bool:
  """Whether the family makes images (and so sample grids while training)."""
  return family.preview is not None or family.sample_images is not None


def small_config(case):
  """The family's test-sized config; "family:architecture" also sets the architecture."""
  name, _, arch = case.partition(":")
  config = token_data.small_config(name)
  if arch:
    config.model.architecture = arch
  if "image_size" in config.data:
    config.data.image_size = 16
  return config


def test_every_family_is_found():
  assert {"upgen", "dalle", "bart", "clip", "vqgan"} <= set(NAMES)
  for name in NAMES:
    assert families.get_family(name).name == name
  with pytest.raises(ValueError, match="no module upgen.models.nope"):
    families.get_family("nope")


@pytest.mark.parametrize("case", CASES)
def test_contract(case):
  name = case.partition(":")[0]
  config = small_config(case)
  config.optim.warmup_steps = 0  # The first step moves the parameters.
  family = families.get_family(name)
  spec = family.reads.synthetic_spec(config.data, image_grid=GRID, image_vocab=IMAGE_VOCAB,
                                     text_vocab=TEXT_VOCAB)
  assert isinstance(spec, DataSpec)
  setup = families.build(config, spec)
  batch = setup.dummy_batch(4)
  assert all(np.shape(v)[0] == 4 for v in batch.values())

  mesh = mesh_lib.make_mesh(config.mesh)
  tx = optimizer.make_optimizer(config.optim, config.train.steps)
  state = state_lib.create_state(setup, tx, mesh, config.mesh, jax.random.key(0))
  rng = jax.random.key(1)
  with mesh_lib.activate(mesh, config.mesh):
    loss, metrics = jax.jit(lambda p, b: setup.loss_fn()(p, b, rng, train=False, step=0))(
        state.params, batch)
    assert np.isfinite(float(loss)) and float(metrics["loss"]) == pytest.approx(float(loss))
    new_state, step_metrics = jax.jit(lambda s, b: step_lib.train_step(
        s, b, rng, loss_fn=setup.loss_fn()))(state, batch)
  assert int(new_state.step) == 1 and float(step_metrics["finite"]) == 1.0
  changed = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(state.params),
                                                      jax.tree.leaves(new_state.params))]
  assert any(changed)
  if family.train_flops is not None:
    assert family.train_flops(setup.model_config).total > 0
  if family.sample_cost is not None:
    assert family.sample_cost(setup.model_config, setup.sample, 2, 1000).flops > 0

  params = new_state.params
  captions = family.reads.captions(jax.tree.map(lambda x: x[:2], batch))
  image_like = lambda out: (out.shape == (2, spec.image_seq_len) and out.dtype == jnp.int32
                            and bool(((out >= 0) & (out < IMAGE_VOCAB)).all())) or \
      (out.dtype == jnp.uint8 and out.shape[0] == 2)
  if family.sample_images is not None:
    assert image_like(jax.jit(setup.bind("sample_images"))(params, *captions, rng))
  if family.inpaint is not None:
    image_BxLi = jnp.asarray(np.arange(2 * spec.image_seq_len).reshape(2, -1) % IMAGE_VOCAB,
                             jnp.int32)
    known_BxLi = jnp.arange(spec.image_seq_len)[None].repeat(2, 0) < spec.image_seq_len // 2
    out = jax.jit(setup.bind("inpaint"))(params, image_BxLi, known_BxLi, *captions, rng)
    assert image_like(out)
    np.testing.assert_array_equal(np.asarray(out)[np.asarray(known_BxLi)],
                                  np.asarray(image_BxLi)[np.asarray(known_BxLi)])
  if family.unconditional_images is not None:
    out = jax.jit(setup.bind("unconditional_images"), static_argnames="num")(params, rng, num=2)
    assert image_like(out)
  if family.caption_images is not None:
    text = jax.jit(setup.bind("caption_images"))(params, jnp.zeros((2, spec.image_seq_len),
                                                                    jnp.int32), rng)
    assert text.shape == (2, spec.text_seq_len) and text.dtype == jnp.int32
    assert bool(((text >= 0) & (text < TEXT_VOCAB)).all())
  preview = preview_lib.preview_fn(setup)
  assert (preview is None) == (not draws(family))  # A scorer draws nothing.
  if preview is not None:
    shown = jax.jit(preview)(params, jax.tree.map(lambda x: x[:2], batch), rng)
    reference = family.reads.reference(jax.tree.map(lambda x: x[:2], batch))
    assert shown.shape[0] == 2 and (shown.shape == np.shape(reference)
                                    or shown.dtype == jnp.uint8)
  # A family without a sampler says so by name.
  for sampler in SAMPLERS:
    if getattr(family, sampler) is None:
      with pytest.raises(ValueError, match=f"family {name!r} cannot"):
        setup.bind(sampler)


@pytest.mark.multidevice
def test_every_family_trains_previews_and_samples_on_8_devices(mesh_job):
  proc, out = mesh_job
  assert proc.wait(timeout=900) == 0, (out / "err").read_text()[-4000:]
  result = json.loads((out / "out").read_text().strip().splitlines()[-1])
  assert result["devices"] == 8
  assert sorted(result["families"]) == sorted(CASES)
  for case, r in result["families"].items():
    name = case.partition(":")[0]
    # Trained on the mesh, wrote a sample grid (the preview ran on the mesh).
    family = families.get_family(name)
    assert r["steps"] == 2 and r["grids"] == int(draws(family)), (case, r)
    assert r["sharded"], case  # Some parameter is split over fsdp / tensor.
    assert r["losses"][0] == pytest.approx(r["losses"][1], rel=2e-5), case  # As on 1 device.
    for sampler in SAMPLERS:
      assert (sampler in r["sampled"]) == (getattr(family, sampler) is not None), (name, r)
    for sampler, shape in r["sampled"].items():
      if sampler == "caption_images":
        assert shape == [3], (name, shape)  # Three captions.
      else:
        assert shape[1:] == [16, 16, 3], (name, sampler, shape)
