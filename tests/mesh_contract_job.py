"""The 8-device half of tests/test_families.py, run as a subprocess (8 fake CPU devices):
every family (and architecture) trains 2 steps on a (data 2, fsdp 2, tensor 2) mesh through `trainer.train`
with a sample grid at step 2, then every sampler it has runs from the run directory the way
`upgen sample` runs it. Prints one JSON line.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m tests.mesh_contract_job OUT
"""
import json
import os
import sys

import jax
import numpy as np

from tests import test_end_to_end
from tests import test_families
from upgen import families
from upgen import inference
from upgen.data import readers
from upgen.datasets import shapes
from upgen.data import sources
from upgen.datasets import tokenize
from upgen.tokenizers import image as image_tok
from upgen.tokenizers import text as text_tok
from upgen.runtime import mesh as mesh_lib
from upgen.runtime import optimizer
from upgen.runtime import state as state_lib
from upgen.train import trainer

MESH = {"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2}


def _train(case: str, data_dir: str, workdir: str) -> dict:
  config = test_families.small_config(case)
  config.update_from_flattened_dict({
      "data.dir": data_dir, "data.batch_size": 8, "train.steps": 2, "train.sample_every": 2,
      "train.sample_examples": 4, "train.eval_batches": 1, "train.progress": False, **MESH})
  summary = trainer.train(config, workdir)
  setup, mesh = trainer.build(config), mesh_lib.make_mesh(config.mesh)
  state = state_lib.create_state(setup, optimizer.make_optimizer(config.optim, 2), mesh,
                                 config.mesh, jax.random.key(0))
  sharded = sorted({str(x.sharding.spec) for x in jax.tree.leaves(state.params)
                    if not x.sharding.is_fully_replicated})
  # The loss of one batch with the parameters sharded over the mesh, and on one device.
  batch = setup.dummy_batch(8)
  loss = jax.jit(lambda p, b: setup.loss_fn()(p, b, jax.random.key(1), train=False, step=0)[0])
  with mesh_lib.activate(mesh, config.mesh):
    on_mesh = float(loss(state.params, jax.device_put(
        batch, mesh_lib.batch_sharding(mesh, config.mesh))))
  one_device = float(loss(jax.device_get(state.params), batch))
  return {"steps": summary["step"], "sharded": sharded, "sampled": {},
          "losses": [on_mesh, one_device],
          "grids": len(test_end_to_end.tensorboard_images(workdir, "samples"))}


def main(out: str) -> dict:
  images = os.path.join(out, "shapes")
  shapes.generate(images, image_size=16, num_train=64, num_val=16, num_test=16, seed=0)
  captions = [e["caption"] for e in sources.read_captions(os.path.join(images, "train"))]
  text = text_tok.train_bpe(captions, 64, os.path.join(out, "text"))
  results = {}
  for case in test_families.CASES:
    if families.get_family(case.partition(":")[0]).reads is readers.IMAGE_FOLDER:
      results[case] = _train(case, images, os.path.join(out, case.replace(":", "-")))
      tokenizer_run = os.path.join(out, case.replace(":", "-"))
  data = os.path.join(out, "data")
  tokenize.tokenize_folder({s: sources.ImageFolderSource(os.path.join(images, s), 16)
                            for s in ("train", "val")}, data, text,
                           image_tok.load(tokenizer_run), pixels=True)
  image_path = sources.read_captions(os.path.join(images, "val"))[0]["image"]
  prompts = ["a small red circle on the left", "a blue square above a green triangle"]
  for case in test_families.CASES:
    if families.get_family(case.partition(":")[0]).reads not in (readers.TOKEN_RECORDS,
                                                                 readers.PIXEL_RECORDS):
      continue
    workdir = os.path.join(out, case.replace(":", "-"))
    results[case] = _train(case, data, workdir)
    run = inference.load_run(workdir)
    sampled, family = {}, run.family
    if family.sample_images:
      sampled["sample_images"] = inference.generate_images(run, prompts, 2, batch_size=4)
    if family.unconditional_images:
      sampled["unconditional_images"] = inference.unconditional_images(run, 3, batch_size=2)
    if family.inpaint:
      sampled["inpaint"] = inference.inpaint_images(run, prompts, 1, image_path, (0, 0, 8, 16))
    if family.caption_images:
      sampled["caption_images"] = inference.caption_images(
          run, np.stack([sources.load_image(image_path, 16)] * 3))
    results[case]["sampled"] = {k: list(np.shape(v)) for k, v in sampled.items()}
  return {"devices": jax.device_count(), "families": results}


if __name__ == "__main__":
  print(json.dumps(main(sys.argv[1])))
