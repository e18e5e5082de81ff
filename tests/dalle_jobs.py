"""The two slow checks of tests/test_dalle.py, run as subprocesses that the test module starts
in the background as soon as it starts (XLA compiles on one core; these use the other one
while the rest of the module compiles). Each prints one JSON line that the tests assert on.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m tests.dalle_jobs mesh
  python -m tests.dalle_jobs train DATA_DIR WORKDIR
"""
import json
import sys

import jax
import numpy as np

from configs import dalle as dalle_config
from tests import test_dalle as t
from tests import token_data
from upgen import families
from upgen.models import dalle
from upgen.sampling import ar_sampler
from upgen.runtime import restore
from upgen.train import trainer
from upgen.runtime import mesh as mesh_lib
from upgen.runtime import optimizer
from upgen.runtime import state as state_lib


def mesh() -> dict:
  """A 1-layer model born sharded on a (data 2, fsdp 2, tensor 2) mesh: where its parameters
  live, and its loss and guided greedy samples on the mesh and on one device."""
  c = t._config(num_layers=1)
  c.update_from_flattened_dict({"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2})
  setup = families.build(c, t.SPEC)
  model, batch = setup.model, t._batch("ppitppip", seed=3)
  devices = mesh_lib.make_mesh(c.mesh)
  state = state_lib.create_state(setup, optimizer.make_optimizer(c.optim, 10), devices, c.mesh,
                                 jax.random.key(0))
  settings = t._settings(temperature=0.0, guidance_scale=2.0)
  loss = jax.jit(lambda p, b: dalle.loss_fn(p, b, jax.random.key(1), model=model,
                                            settings=setup.loss, train=True)[0])

  def run(params, batch):
    samples = ar_sampler.text_to_image(params, model, batch["text_tokens"],
                                          batch["text_mask"], jax.random.key(2), settings)
    return float(loss(params, batch)), np.asarray(samples).tolist()

  with mesh_lib.activate(devices, c.mesh):
    sharded = run(state.params, {k: jax.device_put(v, mesh_lib.batch_sharding(devices, c.mesh))
                                 for k, v in batch.items()})
  p = state.params
  wi = p["decoder"]["layers_0"]["mlp"]["wi"]["kernel"]
  return {"devices": jax.device_count(), "sharded": sharded,
          "one": run(jax.device_get(state.params), batch),
          "wi_spec": str(wi.sharding.spec), "wi_shard": list(wi.addressable_shards[0].data.shape),
          "embed_spec": str(p["embed"]["embedding"].sharding.spec),
          "head_spec": str(p["image_head"]["Dense_0"]["kernel"].sharding.spec)}


def train_then_sample(data_dir: str, workdir: str) -> dict:
  """`trainer.train` of a 1-layer DALL-E on token_data records, then greedy samples from the
  restored checkpoint for 8 new captions, beside the images those captions determine."""
  token_data.write(data_dir)
  c = dalle_config.get_config("tiny")
  c.update_from_flattened_dict({
      **token_data.tiny_overrides(data_dir), "model.num_layers": 1, "train.steps": 100,
      "train.log_every": 1, "train.checkpoint_every": 100, "train.sample_every": 0,
      "optim.lr": 1e-2, "sample.temperature": 0.0})
  summary = trainer.train(c, workdir)
  _, setup, params = restore.restore_params(workdir)
  spec = setup.spec
  rng = np.random.default_rng(7)
  examples = [token_data.example(i, rng) for i in range(8)]
  text = np.full((8, spec.text_seq_len), spec.text_pad_id, np.int32)
  for row, e in zip(text, examples):
    row[:len(e["text_tokens"])] = e["text_tokens"]
  lengths = np.array([len(e["text_tokens"]) for e in examples])
  mask = np.arange(text.shape[1])[None] < lengths[:, None]
  out = setup.bind("sample_images")(params, text, mask, jax.random.key(0))
  return {"step": summary["step"], "image_grid_width": spec.image_grid_width,
          "samples": np.asarray(out).tolist(), "dtype": str(out.dtype),
          "want": [e["image_tokens"].tolist() for e in examples]}


if __name__ == "__main__":
  jax.config.update("jax_threefry_partitionable", False)  # As test_dalle._fast_compiling_rng.
  job, args = sys.argv[1], sys.argv[2:]
  print(json.dumps(mesh() if job == "mesh" else train_then_sample(*args)))
