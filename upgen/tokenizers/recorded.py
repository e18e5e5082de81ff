"""The tokenizers a directory of records was written with, loaded from where its
metadata.json says and checked to be those same tokenizers: a tokenizer.json replaced at its
path, or a VQGAN run holding other weights, would turn prompts into other ids than the model
learned. `text.load_recorded` and `image.load_recorded` go through `load`."""
from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, TypeVar

from upgen.data import records

T = TypeVar("T")


def load(data_dir: str, key: str, loader: Callable[[str], T],
         metadata: Optional[Mapping[str, Any]] = None) -> T:
  """`loader` (text.load / image.load) on the path metadata[key] names, refused by `check`
  when its identity is not the one recorded."""
  metadata = metadata or records.read_metadata(data_dir)
  path = records.tokenizer_path(data_dir, metadata, key)
  tok = loader(path)
  check(data_dir, metadata, key, tok.identity(), path)
  return tok


def _identity_summary(identity: Mapping[str, Any]) -> str:
  size = identity.get("vocab_size", identity.get("config", {}).get("codebook_size"))
  return f"sha256 {str(identity.get('sha256', '?'))[:12]}, {size} ids"


def check(data_dir: str, metadata: Mapping[str, Any], key: str, identity: Mapping[str, Any],
          path: str) -> None:
  """Refuses the tokenizer loaded from `path` for metadata[key] (text_tokenizer /
  image_tokenizer) when it is not the one the records were written with: another hash, or a
  setting both identities name with other values (the path is not part of an identity)."""
  written = metadata[key]["identity"]
  differs = [k for k in sorted(set(written) & set(identity) - {"path"})
             if k != "config" and written[k] != identity[k]]
  config, new_config = written.get("config", {}), identity.get("config", {})
  differs += [f"config.{k}" for k in sorted(set(config) & set(new_config))
              if config[k] != new_config[k]]
  if differs:
    raise records.MetadataError(
        f"{path}: the {key.replace('_', ' ')} here ({_identity_summary(identity)}) is not the "
        f"one the records in {data_dir} were written with ({_identity_summary(written)}, "
        f"{records.METADATA_FILE} {key}.identity; differs in {', '.join(differs)}): put the "
        "original back, or re-run `upgen tokenize` (and retrain) with this one")
