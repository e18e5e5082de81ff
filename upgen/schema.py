"""Config groups -> frozen dataclasses: the one parser behind every family's model, loss and
sample settings.

  cfg = schema.parse(UPGenConfig, config.model, "config.model", given=sizes, skip=("family",))

Every field of the dataclass is read from the group (or from `given`, values the caller
owns, such as sizes that come from the data), defaults fill fields the group leaves out,
and values are converted to the field's annotated type (JSON turns tuples into lists, and
ints into floats' places). Unknown keys, missing required fields and a group key that
`given` also supplies are errors naming every offending `where.key`. Value checks live in
the dataclass's own `__post_init__`, so a settings object that exists is a valid one.
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Any, Iterable, Mapping, Optional, TypeVar

from upgen import errors

T = TypeVar("T")


def _items(group: Any) -> dict[str, Any]:
  if group is None:
    return {}
  if hasattr(group, "to_dict"):  # ml_collections.ConfigDict / FrozenConfigDict.
    return dict(group.to_dict())
  return dict(group)


def _convert(value: Any, kind: Any, key: str) -> Any:
  """`value` as the annotated type `kind` (int, float, bool, str, tuple[...], Optional)."""
  origin = typing.get_origin(kind)
  if origin is typing.Union:  # Optional[X]: None or X.
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    return None if value is None else _convert(value, args[0], key)
  if origin is tuple or kind is tuple:
    if not isinstance(value, (list, tuple)):
      raise errors.ConfigError(f"{key}={value!r}: expected a sequence")
    args = typing.get_args(kind)
    item = args[0] if args else None
    return tuple(_convert(v, item, key) if item not in (None, Ellipsis) else v for v in value)
  if kind is bool:
    if not isinstance(value, (bool, int)) or value not in (0, 1, True, False):
      raise errors.ConfigError(f"{key}={value!r}: expected True or False")
    return bool(value)
  if kind is int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
      raise errors.ConfigError(f"{key}={value!r}: expected an integer")
    return int(value)
  if kind is float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      raise errors.ConfigError(f"{key}={value!r}: expected a number")
    return float(value)
  if kind is str:
    if not isinstance(value, str):
      raise errors.ConfigError(f"{key}={value!r}: expected a string")
    return value
  return value


def parse(cls: type[T], group: Any, where: str, *, given: Optional[Mapping[str, Any]] = None,
          skip: Iterable[str] = ()) -> T:
  """An instance of the frozen dataclass `cls` from a config group (see the module docstring).

  where: the group's name in error messages ("config.model").
  given: field values the caller supplies; the group must not set them too.
  skip: group keys that are not fields of `cls` and are read elsewhere.
  """
  given = dict(given or {})
  values = _items(group)
  for key in skip:
    values.pop(key, None)
  fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
  hints = typing.get_type_hints(cls)
  clash = sorted(k for k in values if k in given)
  if clash:
    raise errors.ConfigError(f"{', '.join(f'{where}.{k}' for k in clash)}: set in the config, but "
                             f"{'it comes' if len(clash) == 1 else 'they come'} from the data "
                             "(the records' metadata.json); remove it from the config")
  unknown = sorted(k for k in values if k not in fields)
  if unknown:
    raise errors.ConfigError(f"{', '.join(f'{where}.{k}' for k in unknown)}: unknown key"
                             f"{'s' if len(unknown) > 1 else ''} ({cls.__name__} takes "
                             f"{', '.join(sorted(k for k in fields if k not in given))})")
  values.update(given)
  missing = sorted(name for name, f in fields.items() if name not in values
                   and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING)
  if missing:
    raise errors.ConfigError(f"{', '.join(f'{where}.{k}' for k in missing)}: missing "
                             f"({cls.__name__} needs {'it' if len(missing) == 1 else 'them'})")
  kwargs = {k: _convert(v, hints.get(k, Any), f"{where}.{k}") for k, v in values.items()}
  return cls(**kwargs)


def to_dict(obj: Any) -> dict[str, Any]:
  """The init fields of a dataclass instance, for JSON (tuples stay tuples)."""
  return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if f.init}
