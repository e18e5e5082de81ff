"""Run directories written before config.model was split into model / loss / data spec.

tests/data/v1_runs/*.json are config.json files that the previous layout wrote (tiny runs of
each family, on tests/token_data.py records and a 16-pixel shapes folder). They load as the
same model, resume training in place, and a missing key fails by name."""
import json
import os

import jax
import ml_collections
import numpy as np
import pytest

from tests import token_data
from upgen import families
from upgen.data.spec import DataSpec
from upgen.runtime import checkpoint
from upgen.runtime import restore
from upgen.runtime import migrate
from upgen.train import trainer
from upgen.runtime import writers

V1 = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "v1_runs")


def _v1(name: str, data_dir: str) -> dict:
  with open(os.path.join(V1, f"{name}.json")) as f:
    raw = json.load(f)
  raw["data"]["dir"] = data_dir
  return raw


def _write_v1(workdir: str, raw: dict) -> None:
  """What a run directory of the previous layout holds: config.json, no data_spec.json."""
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump(raw, f)
  os.remove(os.path.join(workdir, "data_spec.json"))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return token_data.write(str(tmp_path_factory.mktemp("records")))


@pytest.mark.parametrize("name", ["upgen", "dalle"])
def test_a_v1_token_run_loads_the_same_model_and_resumes(name, data_dir, tmp_path):
  raw = _v1(name, data_dir)
  today, spec = migrate.from_v1(raw, "config.json")
  assert migrate.is_v1(raw) and not migrate.is_v1(today)
  assert "kind" not in today["data"] and today["data"]["text_seq_len"] == 6
  dropped = {key for group, key in migrate.DROPPED if group == "loss"}
  assert set(migrate.LOSS_KEYS[name]) - dropped == set(today["loss"])
  # Padding was never a token then: the migrated model reads text as it did.
  assert "text_pads" not in today["model"]
  assert not set(migrate.TOKEN_SIZES) & set(today["model"])
  # The sizes the old config had resolved are the ones the records give today.
  config = ml_collections.ConfigDict(today)
  assert spec == trainer.build(config).spec == DataSpec(
      text_vocab_size=token_data.TEXT_VOCAB, text_pad_id=0, text_mask_id=1, text_bos_id=2,
      text_eos_id=3, text_seq_len=6,
      image_vocab_size=token_data.IMAGE_VOCAB, image_grid=token_data.GRID, image_size=8)

  workdir = str(tmp_path / "run")
  config.train.steps = 2
  trainer.train(config, workdir)
  _, _, want = restore.restore_params(workdir)
  _write_v1(workdir, raw)
  loaded, setup, params = restore.restore_params(workdir)
  assert {g: loaded[g].to_dict() for g in ("model", "loss", "data")} == {
      g: today[g] for g in ("model", "loss", "data")}
  assert setup.spec == spec
  for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)
  # Training on in place resumes at step 2 and rewrites the run in today's layout.
  config.train.steps = 4
  assert trainer.train(config, workdir)["step"] == 4
  assert [r["step"] for r in writers.read_metrics(workdir) if "loss" in r] == [1, 2, 3, 4]
  assert checkpoint.load_run_config(workdir)[1] == spec
  assert not migrate.is_v1(json.load(open(os.path.join(workdir, "config.json"))))


def test_v1_values_and_missing_keys(tmp_path):
  raw = _v1("upgen", str(tmp_path / "nowhere"))
  raw["model"]["mask_schedule"] = "uniform"  # Training's name for "linear" back then.
  today, spec = migrate.from_v1(raw, "config.json")
  assert today["loss"]["mask_schedule"] == "linear"
  assert spec.image_size == 0  # The records are gone; everything else came from the config.
  del raw["model"]["image_grid_width"]
  (tmp_path / "config.json").write_text(json.dumps(raw))
  with pytest.raises(ValueError, match=r"config.json: this run was written before "
                                       r"data_spec.json existed and its config.model has no "
                                       r"'image_grid_width'.*image_tokenizer.grid\[1\]"):
    checkpoint.load_run_config(str(tmp_path))
  raw = _v1("upgen", "")
  raw["model"]["family"] = "glide"
  with pytest.raises(ValueError, match="family='glide' is not a family this version"):
    migrate.from_v1(raw, "config.json")


def test_a_v1_image_tokenizer_run(tmp_path):
  raw = _v1("vqgan", str(tmp_path))
  (tmp_path / "config.json").write_text(json.dumps(raw))
  config, spec = checkpoint.load_run_config(str(tmp_path))
  assert spec == DataSpec(image_size=16) and config.data.image_size == 16
  assert config.model.discriminator is False and "sample" not in config
  assert config.loss.codebook_revive_weight == 1.0 and "image_size" not in config.model
  setup = families.build(config, spec)
  assert setup.model_config.grid == 4
