"""Evaluators by name (evaluators/registry.py): the modules found, the validation loss as one
more evaluator, config errors that name the key, and `upgen eval NAME` dispatch."""
import dataclasses

import jax
import ml_collections
import numpy as np
import pytest

from configs import upgen as upgen_config
from tests import token_data
from upgen import cli
from upgen import errors
from upgen.evaluators import registry
from upgen.evaluators import val_loss
from upgen.runtime import mesh as mesh_lib
from upgen.runtime import optimizer
from upgen.runtime import state as state_lib
from upgen.train import trainer


def test_evaluators_are_found_by_what_they_export():
  assert {"val_loss", "samples", "text_ppl"} <= set(registry.names("evaluator"))
  assert {"captions", "clip_score", "fid", "fit", "nll", "probe", "recon", "shapes",
          "text_ppl"} <= set(registry.names("main"))
  assert "val_loss" not in registry.names("main")  # No command of its own.


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  data_dir = token_data.write(str(tmp_path_factory.mktemp("records")))
  c = upgen_config.get_config("tiny")
  c.update_from_flattened_dict({**token_data.tiny_overrides(data_dir),
                                "optim.ema_decay": 0.9})
  setup = trainer.build(c)
  mesh = mesh_lib.make_mesh(c.mesh)
  tx = optimizer.make_optimizer(c.optim, c.train.steps)
  state = state_lib.create_state(setup, tx, mesh, c.mesh, jax.random.key(0), ema=True)
  sharding = mesh_lib.batch_sharding(mesh, c.mesh)
  rows = mesh_lib.process_rows(sharding, c.data.batch_size)
  context = registry.Context(c, setup, mesh, sharding, rows, lambda: int(c.train.steps))
  return c, setup, state, context


def test_the_validation_loss_is_an_evaluator_of_every_run(run):
  c, setup, state, context = run
  evaluators = registry.build(context)
  assert list(evaluators) == ["val_loss"]  # The tiny config's entries are off by default.
  with mesh_lib.activate(context.mesh, c.mesh):
    out = registry.run(evaluators, state)
  # Unprefixed, for the parameters and their EMA (equal at init, so the same losses).
  assert {"val_loss", "val_ema_loss"} <= set(out) and not any("/" in k for k in out)
  assert out["val_loss"] == out["val_ema_loss"] and np.isfinite(out["val_loss"])
  # The same number as the family's loss on the first validation batch by hand.
  batch = next(iter(setup.family.reads.eval_iterator(c, setup.spec, c.data.val_split,
                                                     context.rows)))
  global_batch = mesh_lib.global_batch(batch, context.batch_sharding, c.data.batch_size)
  with mesh_lib.activate(context.mesh, c.mesh):
    by_hand = val_loss.eval_step(state.params, global_batch,
                                 jax.random.fold_in(jax.random.key(c.seed + 1), 0),
                                 loss_fn=setup.loss_fn(), step=c.train.steps)
  assert c.train.eval_batches == 1
  assert out["val_loss"] == pytest.approx(float(by_hand["loss"]), rel=1e-6)
  # Off with no evaluation batches.
  off = c.copy_and_resolve_references()
  off.train.eval_batches = 0
  assert registry.build(dataclasses.replace(context, config=off)) == {}


def test_config_entries_are_checked_by_name(run):
  c, _, _, context = run
  bad = c.copy_and_resolve_references()
  bad.evals.mine = ml_collections.ConfigDict({"type": "no_such_thing"})
  with pytest.raises(errors.ConfigError, match=r"config.evals.mine.type='no_such_thing': no "
                     r"evaluator 'no_such_thing' \(evaluators: .*text_ppl.*val_loss"):
    registry.build(dataclasses.replace(context, config=bad))
  taken = c.copy_and_resolve_references()
  taken.evals.val_loss = ml_collections.ConfigDict({"type": "text_ppl"})
  with pytest.raises(errors.ConfigError, match="config.evals.val_loss: the validation loss"):
    registry.build(dataclasses.replace(context, config=taken))
  # A text_ppl entry without its file is off; the entry's metrics are prefixed by its name.
  held = c.copy_and_resolve_references()
  held.evals.held_out = ml_collections.ConfigDict({"type": "text_ppl", "text": ""})
  assert list(registry.build(dataclasses.replace(context, config=held))) == ["val_loss"]
  fake = {"val_loss": lambda s: {"val_loss": 1.0}, "held_out": lambda s: {"perplexity": 2.0}}
  assert registry.run(fake, None) == {"val_loss": 1.0, "held_out/perplexity": 2.0}


def test_upgen_eval_dispatches_by_name(capsys):
  assert cli.main(["eval", "nope"]) == 2
  err = capsys.readouterr().err
  assert err.startswith("upgen eval nope: error: no evaluator 'nope' (evaluators: captions, "
                        "clip-score,")
  assert "text-ppl" in err and "val-loss" not in err
  with pytest.raises(SystemExit) as e:
    cli.main(["eval", "text-ppl", "--help"])
  assert e.value.code == 0
  assert capsys.readouterr().out.startswith("usage: upgen eval text-ppl")
  assert cli.main(["eval"]) == 2  # No name: the usage, which lists every evaluator command.
  assert "upgen eval clip-score" in capsys.readouterr().err
