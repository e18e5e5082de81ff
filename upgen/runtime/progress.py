"""Progress for long loops: a tqdm bar on a terminal; elsewhere (a log file, a pipe, a
scheduler's output) one plain line per interval, so a log holds lines, not thousands of
carriage-return frames."""
from __future__ import annotations

import sys
import time
from typing import Any, Callable, Optional, TextIO

import tqdm

INTERVAL_S = 30.0  # Between lines when not on a terminal.


class Lines:
  """tqdm's surface that upgen uses (update, set_postfix, total, refresh, close), written as
  `DESC: N/TOTAL UNIT (P%), R UNIT/s[, key=value]` at most once per `interval_s` and once
  at close."""

  def __init__(self, total: Optional[int], initial: int = 0, desc: str = "", unit: str = "it",
               file: Optional[TextIO] = None, interval_s: float = INTERVAL_S,
               clock: Callable[[], float] = time.monotonic):
    self.total, self.n, self.desc, self.unit = total, initial, desc, unit
    self._file = file or sys.stderr
    self._interval_s, self._clock = interval_s, clock
    self._start = self._last = clock()
    self._start_n, self._last_n = initial, initial
    self._postfix = ""
    self._closed = False

  def update(self, n: int = 1) -> None:
    self.n += n
    if self._clock() - self._last >= self._interval_s:
      self._write()

  def set_postfix(self, **values: Any) -> None:
    self._postfix = ", ".join(f"{k}={v}" for k, v in values.items())

  def refresh(self) -> None:
    """No-op (the next line shows a changed total)."""

  def close(self) -> None:
    if not self._closed and self.n != self._last_n:
      self._write(rate_since=self._start, rate_from=self._start_n)
    self._closed = True

  def __enter__(self) -> "Lines":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def _write(self, rate_since: Optional[float] = None, rate_from: Optional[int] = None) -> None:
    now = self._clock()
    since = self._last if rate_since is None else rate_since
    done = self.n - (self._last_n if rate_from is None else rate_from)
    rate = done / max(now - since, 1e-9)
    of = f"/{self.total}" if self.total else ""
    pct = f" ({100.0 * self.n / self.total:.1f}%)" if self.total else ""
    tail = f", {self._postfix}" if self._postfix else ""
    print(f"{self.desc}: {self.n}{of} {self.unit}{pct}, {rate:.3g} {self.unit}/s{tail}",
          file=self._file, flush=True)
    self._last, self._last_n = now, self.n


def bar(total: Optional[int], *, desc: str, initial: int = 0, unit: str = "it",
        disable: bool = False, file: Optional[TextIO] = None) -> Any:
  """A tqdm bar when `file` (stderr) is a terminal, else `Lines`; a silent tqdm when
  disabled."""
  if disable:
    return tqdm.tqdm(total=total, disable=True)
  file = file or sys.stderr
  if file.isatty():
    return tqdm.tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True,
                     file=file)
  return Lines(total, initial, desc, unit, file=file)
