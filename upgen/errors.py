"""Errors a user can fix: the CLI prints them as one line, `upgen <command>: error: <message>`,
and exits with status 2 (`--debug`, or UPGEN_DEBUG=1, shows the traceback). Every message
says what is wrong, where (the file, record or config key) and, where it is not obvious, how
to fix it. Anything else that escapes is a bug and keeps its traceback.

Each class also derives from the builtin a caller would expect (`ConfigError` is a
ValueError, `NotFound` a FileNotFoundError, `StorageError` an OSError), so code that
catches those keeps working.
"""
from __future__ import annotations


class UserError(Exception):
  """Something the user can fix; the message names it."""


class ConfigError(UserError, ValueError):
  """A config value, a command-line flag, or a run directory's config that does not fit."""


class DataError(UserError, ValueError):
  """Records, metadata, captions files, images or weight files that are malformed."""


class NotFound(UserError, FileNotFoundError):
  """A path the user gave (or a file a run directory points to) does not exist."""


class StorageError(UserError, OSError):
  """Reading or writing failed: disk full, permission denied, unreadable checkpoint."""
