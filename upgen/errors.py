"""Errors a user can fix: the CLI prints them as one line, `upgen <command>: error: <message>`,
and exits with status 2 (`--debug`, or UPGEN_DEBUG=1, shows the traceback). Every message
says what is wrong, where (the file, record or config key) and, where it is not obvious, how
to fix it. Anything else that escapes is a bug and keeps its traceback.

Each class also derives from the builtin a caller would expect (`ConfigError` is a
ValueError, `NotFound` a FileNotFoundError, `StorageError` an OSError), so code that
catches those keeps working.
"""
from __future__ import annotations

import argparse


class UserError(Exception):
  """Something the user can fix; the message names it."""


class ConfigError(UserError, ValueError):
  """A config value, a command-line flag, or a run directory's config that does not fit."""


class DataError(UserError, ValueError):
  """Records, metadata, captions files, images or weight files that are malformed."""


class BadExample(DataError):
  """One example a source cannot give (an undecodable image, a missing caption, a tar
  member with no pair): `upgen tokenize` skips and counts it by `reason` where
  --max-bad-fraction allows, and stops with the message where it does not."""

  def __init__(self, message: str, *, reason: str, example_id: str):
    super().__init__(message)
    self.reason, self.example_id = reason, example_id


class NotFound(UserError, FileNotFoundError):
  """A path the user gave (or a file a run directory points to) does not exist."""


class StorageError(UserError, OSError):
  """Reading or writing failed: disk full, permission denied, unreadable checkpoint."""


class UsageError(ConfigError):
  """A command line that does not parse: a missing, unknown or malformed argument."""


class ArgumentParser(argparse.ArgumentParser):
  """argparse whose errors are UsageErrors, so a bad argument prints as one line like any
  other user error (not argparse's usage block and exit), and `-h` still prints the help."""

  def error(self, message: str):
    raise UsageError(f"{message} (`{self.prog} --help` lists the arguments)")


def whole(minimum: int = 1):
  """An argparse type: a whole number >= minimum (else a one-line usage error)."""

  def parse(text: str) -> int:
    try:
      value = int(text)
    except ValueError:
      value = None
    if value is None or value < minimum:
      raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= {minimum}")
    return value

  return parse


def number(low: float = 0.0, *, above: bool = True, below: float = float("inf")):
  """An argparse type: a finite number > low (>= low when `above` is False) and < below."""

  def parse(text: str) -> float:
    try:
      value = float(text)
    except ValueError:
      value = float("nan")
    if not (value > low if above else value >= low) or not value < below:
      where = f"{'>' if above else '>='} {low:g}" + (f" and < {below:g}" if below < float("inf")
                                                     else "")
      raise argparse.ArgumentTypeError(f"{text!r} is not a number {where}")
    return value

  return parse
