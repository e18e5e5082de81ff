"""Parameters read back for use elsewhere: a run's latest checkpoint as (config, built
family, params), and the partial parameter trees of an INIT directory (`upgen import hf`,
`upgen align`).

`restore_params` is what every consumer of a trained run calls (the image tokenizer, the
inference API, evaluators, `config.train.init_from`); the trainer's own resume goes through
`checkpoint.Checkpointer` with the data iterator.
"""
from __future__ import annotations

import os
import shutil
from typing import Any, Mapping, Optional

import ml_collections
import orbax.checkpoint as ocp

from upgen import errors
from upgen import families
from upgen import rundir
from upgen.runtime import checkpoint
from upgen.runtime import mesh as mesh_lib
from upgen.runtime import optimizer as optimizer_lib
from upgen.runtime import state as state_lib


def save_params(path: str, params: Mapping[str, Any]) -> None:
  """A (partial) parameter tree as an orbax directory, replacing what `path` held."""
  path = os.path.abspath(path)
  if os.path.exists(path):
    shutil.rmtree(path)
  with ocp.StandardCheckpointer() as ckpt:
    ckpt.save(path, params)


def load_params(init_dir: str, sub: str = rundir.PARAMS_DIR) -> dict[str, Any]:
  """The parameter tree an import (or `upgen align`) wrote (numpy leaves)."""
  path = os.path.abspath(os.path.join(init_dir, sub))
  if not os.path.isdir(path):
    raise errors.NotFound(f"{path}: not found; config.train.init_from must name a directory "
                          "written by `upgen import hf`")
  with ocp.StandardCheckpointer() as ckpt:
    return ckpt.restore(path)


def restore_params(workdir: str, step: Optional[int] = None, mesh=None, ema: bool = True
                   ) -> tuple[ml_collections.ConfigDict, families.Setup, Any]:
  """(config, built family, params) from the latest (or given) checkpoint of a run directory:
  the EMA of the parameters where the run keeps one (config.optim.ema_decay) and `ema`,
  else the trained parameters.

  Params are restored in the layout the current mesh gives them (by default all local
  devices as data parallel), whatever mesh wrote them.
  """
  config, spec = checkpoint.load_run_config(workdir)
  setup = families.build(config, spec)
  tx = optimizer_lib.for_setup(setup, config.optim, config.train.steps)
  if mesh is None:
    mesh = mesh_lib.make_mesh(ml_collections.ConfigDict(
        {"replica": 1, "data": -1, "fsdp": 1, "tensor": 1, "rules": config.mesh.rules}))
  with mesh_lib.detached():  # The caller's mesh (a training loop's) is not this layout.
    abstract, _ = state_lib.abstract_state(setup, tx, mesh, config.mesh,
                                           checkpoint.uses_ema(config))
    ckpt = checkpoint.Checkpointer(workdir, async_save=False)
    try:
      _, restored, _ = ckpt.restore(checkpoint.state_dict(abstract), step)
    finally:
      ckpt.close()
  return config, setup, restored["ema_params" if ema and "ema_params" in restored else "params"]
