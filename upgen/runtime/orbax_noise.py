"""Quiet for what orbax reports more than once when a checkpoint read fails.

orbax stops a restore at its first failed read and closes its event loop with the other reads
in flight: each of those then reports `RuntimeError: Event loop is closed`, each failed read's
coroutine is reported when it is collected (both through sys.unraisablehook), and asyncio logs
the failure again for the gathering future nobody awaited. A damaged checkpoint gave up to
thousands of lines of such tracebacks around the one error `checkpoint.Checkpointer.restore`
reports (or skips with one warning line).
"""
from __future__ import annotations

import contextlib
import logging
import re
import sys
from typing import Iterator, Optional

# A tensorstore (absl) status, as its errors start: "OUT_OF_RANGE: Error reading ...".
STATUS = re.compile(r"^[A-Z][A-Z_]+: ")

_installed = False


def is_read_failure(e: Optional[BaseException]) -> bool:
  """Whether `e` is (or was caused by) a failed tensorstore read."""
  while e is not None:
    text = str(e).strip()
    if "while reading array" in text or (STATUS.match(text) and
                                         ("Error reading" in text or "Error opening" in text)):
      return True
    e = e.__cause__ or e.__context__
  return False


class _NeverRetrievedFilter(logging.Filter):
  """Drops asyncio's "exception was never retrieved" for a failed read."""

  def filter(self, record: logging.LogRecord) -> bool:
    exc = record.exc_info[1] if record.exc_info else None
    return not ("exception was never retrieved" in record.getMessage()
                and is_read_failure(exc))


def quiet_abandoned_reads() -> None:
  """Drops the copies (once installed, for the process's life); every other unraisable
  exception and asyncio record reaches the hook and handlers it reached before."""
  global _installed
  if _installed:
    return
  _installed = True
  previous = sys.unraisablehook

  def hook(unraisable):
    exc = unraisable.exc_value
    if not ((isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed")
            or is_read_failure(exc)):
      previous(unraisable)

  sys.unraisablehook = hook
  logging.getLogger("asyncio").addFilter(_NeverRetrievedFilter())


@contextlib.contextmanager
def absl_below(level: int) -> Iterator[None]:
  """absl's (orbax's) log records below `level` dropped for the block."""
  logger = logging.getLogger("absl")
  old = logger.level
  logger.setLevel(max(level, old))
  try:
    yield
  finally:
    logger.setLevel(old)
