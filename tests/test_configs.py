"""Every config of every family loads, and every field can be set from the command line."""
import importlib

import pytest
from ml_collections import config_dict

from upgen.train import main

FAMILIES = {"upgen": ("tiny", "small", "base", "large"), "dalle": None, "vqgan": ("tiny", "base"),
            "dvae": ("tiny", "base"), "clip": None, "glide": None}


def _variants(name):
  module = importlib.import_module(f"configs.{name}")
  return FAMILIES[name] or tuple(getattr(module, "SIZES", None) or module.VARIANTS)


CASES = [(name, v) for name in FAMILIES for v in _variants(name)]


def _leaves(c, prefix=""):
  for key, value in c.items():
    if isinstance(value, config_dict.ConfigDict):
      yield from _leaves(value, f"{prefix}{key}.")
    else:
      yield prefix + key, value


@pytest.mark.parametrize("name,variant", CASES)
def test_no_field_is_none(name, variant):
  """ml_collections cannot parse `--config.KEY=V` for a field whose default is None (the
  documented `--config.model.attention_impl=cudnn` once failed this way)."""
  c = importlib.import_module(f"configs.{name}").get_config(variant)
  assert not [k for k, v in _leaves(c) if v is None]


@pytest.mark.parametrize("impl", ["xla", "cudnn"])
def test_attention_impl_override_parses(impl):
  fv, argv = main.config_flags_for(
      ["--config=configs/upgen.py:large", f"--config.model.attention_impl={impl}",
       "--config.model.remat=dots_no_batch"], "upgen bench")
  fv(["upgen bench"] + argv)
  assert fv.config.model.attention_impl == impl and fv.config.model.remat == "dots_no_batch"
  with pytest.raises(AttributeError, match="attention_impl"):
    fv2, argv2 = main.config_flags_for(["--config=configs/upgen.py:tiny",
                                        "--config.model.atention_impl=xla"], "upgen bench")
    fv2(["upgen bench"] + argv2)
