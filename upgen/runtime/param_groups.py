"""Parameter groups: the names config.optim.freeze and config.train.init_groups use for
parts of a model (a family's `param_groups`: group -> path patterns), and the pytree paths
they match ("decoder/layers_0/attn/query/kernel")."""
from __future__ import annotations

import re
from typing import Any, Mapping, Optional, Sequence

from upgen import errors


def group_members(key: str, value: str, groups: Mapping[str, Sequence[str]]) -> frozenset[str]:
  """The parameter patterns of the comma-separated parameter groups `value` of the config
  key `key` (config.optim.freeze, config.train.init_groups); `groups` is the family's
  `param_groups` (see `resolve_groups`). An unknown group is an error naming the key and
  the family's groups."""
  names = [g.strip() for g in str(value or "").split(",") if g.strip()]
  unknown = [g for g in names if g not in groups]
  if unknown:
    raise errors.ConfigError(
        f"{key}={value!r}: no parameter group {', '.join(unknown)} in this family (its "
        f"groups: {', '.join(sorted(groups)) or 'none'})")
  return frozenset(pattern for g in names for pattern in groups[g])


def param_path(keys) -> str:
  """A pytree key path as "decoder/layers_0/attn/query/kernel" (the names `member` reads)."""
  return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in keys)


def member(path: str, patterns: Sequence[str]) -> Optional[int]:
  """How much of the parameter at `path` ("decoder/layers_0/attn/query/kernel") the group
  `patterns` hold: -1 all of it, N > 0 its first N rows, None none. A pattern is a regular
  expression matching the whole path or a leading part of it that ends at a "/", with an
  optional "[:N]" suffix for a table's first N rows ("token_embed/embedding[:50257]")."""
  rows = None
  for pattern in patterns:
    m = re.fullmatch(r"(.*)\[:(\d+)\]", pattern)
    regex, n = (m.group(1), int(m.group(2))) if m else (pattern, -1)
    if re.fullmatch(regex, path) or re.match(f"(?:{regex})/", path):
      if n == -1:
        return -1
      rows = max(rows or 0, n)
  return rows


def resolve_groups(family: Any, model_config: Any) -> Mapping[str, tuple[str, ...]]:
  """The family's parameter groups for this model (`param_groups` may depend on it)."""
  groups = family.param_groups
  return groups(model_config) if callable(groups) else groups

