"""Progress off a terminal is a line per interval (#30: a quickstart log was 470 KB of
carriage-return frames)."""
import io

import tqdm

from tests import test_periodic
from upgen.runtime import progress


def test_lines_off_a_terminal_one_per_interval():
  out, clock = io.StringIO(), test_periodic.Clock()
  bar = progress.Lines(1000, initial=100, desc="train upgen", unit="steps", file=out,
                       interval_s=30, clock=clock)
  for _ in range(10):  # 10 s of steps: nothing yet.
    clock.now += 1
    bar.update(10)
  assert out.getvalue() == ""
  clock.now += 20
  bar.set_postfix(loss="2.5000")
  bar.update(100)  # 30 s since the start: the first line, at 200 / 30 s.
  clock.now += 30
  bar.update(300)
  bar.total = 1200
  clock.now += 5
  bar.update(100)
  bar.close()
  bar.close()
  assert out.getvalue().splitlines() == [
      "train upgen: 300/1000 steps (30.0%), 6.67 steps/s, loss=2.5000",
      "train upgen: 600/1000 steps (60.0%), 10 steps/s, loss=2.5000",
      # At close: the whole run's rate (600 steps in 65 s), and the changed total.
      "train upgen: 700/1200 steps (58.3%), 9.23 steps/s, loss=2.5000"]
  assert "\r" not in out.getvalue()


def test_bar_picks_by_terminal():
  class Tty(io.StringIO):
    def isatty(self):
      return True

  assert isinstance(progress.bar(10, desc="x", file=io.StringIO()), progress.Lines)
  on_tty = progress.bar(10, desc="x", file=Tty())
  assert isinstance(on_tty, tqdm.tqdm) and not on_tty.disable
  silent = progress.bar(10, desc="x", disable=True)
  silent.update(5)
  silent.close()
  assert silent.disable
