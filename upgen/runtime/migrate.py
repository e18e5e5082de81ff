"""Run directories written before the family contract split config.model in three.

Those runs have a config.json whose `model` group holds the architecture, the loss settings
and the sizes resolved from the data, and no data_spec.json. `from_v1` rewrites such a
config into today's groups (the loss settings to `config.loss`, the caption length and the
image size to `config.data`, `data.kind` dropped) and rebuilds the DataSpec from the resolved
sizes, so the run loads with exactly the model it was trained with. A key it needs and does
not find is an error that names it and says where its value lives.
"""
from __future__ import annotations

import copy
import logging
from typing import Any

from upgen import errors
from upgen.data import records
from upgen.data.spec import DataSpec

log = logging.getLogger("upgen.train")

# Keys that moved from config.model to config.loss, per family.
LOSS_KEYS = {
    "upgen": ("mask_schedule", "paired_masking", "text_only_mask_ratio", "paired_text_mask_max",
              "paired_text_mask_prob", "paired_image_weight", "paired_text_weight",
              "unpaired_image_weight", "unpaired_text_weight"),
    "dalle": ("text_loss_weight", "image_loss_weight", "caption_dropout"),
    "vqgan": ("l1_weight", "l2_weight", "commitment_cost", "codebook_revive_weight",
              "adversarial_weight", "adversarial_start"),
}
# Token families: config.model key -> where its value lives in the records' metadata.json.
TOKEN_SIZES = {
    "image_vocab_size": "image_tokenizer.codebook_size",
    "image_seq_len": "image_tokenizer.grid (rows x columns)",
    "image_grid_width": "image_tokenizer.grid[1]",
    "text_vocab_size": "text_tokenizer.vocab_size",
    "text_pad_id": "text_tokenizer.pad_id",
    "text_mask_id": "text_tokenizer.mask_id",
    "text_seq_len": "the caption length the run was configured with (configs/<family>.py)",
}
# The training objective's names before one mask schedule module served training and
# decoding ("uniform" ratios were 1 - u, which mask_schedule calls "linear").
RENAMED_VALUES = {("loss", "mask_schedule"): {"uniform": "linear"}}
# Loss settings that no longer exist (the objective may change on resume; said in the log).
DROPPED = {("loss", "paired_text_mask_max"): "captions are masked by the mask schedule's ratio"}


def is_v1(raw: dict) -> bool:
  """A config.json without a loss group was written before the split."""
  return "loss" not in raw


def _take(model: dict, key: str, where: str, hint: str) -> Any:
  if key not in model:
    raise ValueError(
        f"{where}: this run was written before data_spec.json existed and its config.model "
        f"has no {key!r} to rebuild it from. Add \"{key}\": <value> to the model group of "
        f"config.json ({hint}), or train again in a new --workdir")
  return model.pop(key)


def _from_records(data_dir: str) -> dict[str, int]:
  """Spec fields the old config never held, read from the records' metadata as today's
  reader reads them ({} when the records are not reachable from here: they stay unknown)."""
  try:
    meta = records.read_metadata(data_dir)
  except (OSError, ValueError, KeyError, TypeError):
    return {}
  out = {}
  if meta["image_tokenizer"]:
    out["image_size"] = int(meta["image_tokenizer"]["image_size"])
  if meta["text_tokenizer"]:
    out["text_bos_id"] = int(meta["text_tokenizer"]["bos_id"])
    out["text_eos_id"] = int(meta["text_tokenizer"]["eos_id"])
  return out


def from_v1(raw: dict, where: str) -> tuple[dict, DataSpec]:
  """(today's config dict, DataSpec) from an old config.json dict; `where` names the file."""
  raw = copy.deepcopy(raw)
  model, data = raw.setdefault("model", {}), raw.setdefault("data", {})
  family = model.get("family", "")
  if family not in LOSS_KEYS:
    raise errors.ConfigError(
        f"{where}: config.model.family={family!r} is not a family this version "
        f"of upgen can migrate ({sorted(LOSS_KEYS)}); train again in a new "
        "--workdir")
  data.pop("kind", None)
  raw["loss"] = {k: model.pop(k) for k in LOSS_KEYS[family] if k in model}
  if family == "vqgan":
    size = _take(model, "image_size", where, "the training resolution in pixels")
    data["image_size"] = size
    model["discriminator"] = float(raw["loss"].get("adversarial_weight", 0.0)) > 0
    raw.pop("sample", None)
    spec = DataSpec(image_size=int(size))
  else:
    sizes = {k: int(_take(model, k, where, f"metadata.json {hint}"))
             for k, hint in TOKEN_SIZES.items()}
    width = sizes["image_grid_width"]
    if width < 1 or sizes["image_seq_len"] % width:
      raise errors.ConfigError(
          f"{where}: config.model.image_seq_len={sizes['image_seq_len']} is not a "
          f"grid of image_grid_width={width} columns")
    data["text_seq_len"] = sizes["text_seq_len"]
    spec = DataSpec(text_vocab_size=sizes["text_vocab_size"], text_pad_id=sizes["text_pad_id"],
                    text_mask_id=sizes["text_mask_id"], text_seq_len=sizes["text_seq_len"],
                    image_vocab_size=sizes["image_vocab_size"],
                    image_grid=(sizes["image_seq_len"] // width, width),
                    **_from_records(data.get("dir", "")))
  for (group, key), renames in RENAMED_VALUES.items():
    value = raw.get(group, {}).get(key)
    if value in renames:
      raw[group][key] = renames[value]
  log.warning("%s: written before the config split (model / loss / data spec); read as "
              "today's layout. Training it again in place rewrites it.", where)
  return drop_retired(raw, where), spec


def drop_retired(raw: dict, where: str) -> dict:
  """`raw` without the settings that no longer exist (DROPPED), each dropped with a warning:
  what any config.json goes through, whatever its layout."""
  raw = copy.deepcopy(raw)
  for (group, key), why in DROPPED.items():
    if key in raw.get(group, {}):
      log.warning("%s: dropped config.%s.%s=%r (%s)", where, group, key,
                  raw[group].pop(key), why)
  return raw
