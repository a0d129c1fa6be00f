"""Progress reports that suit where the output goes.

On a terminal: a tqdm bar (rate, ETA). Anywhere else (a log file, a cluster job's stdout, the
demo's demo.log): tqdm's carriage-return redraws would write thousands of partial lines, so a
plain line is printed every `interval` seconds instead, and once at the end.

    bar = progress(total=1000, desc="finetune", unit="step")
    bar.update(1); bar.set_postfix(loss="0.12"); bar.close()
"""
from __future__ import annotations

import sys
import time

from tqdm import tqdm

PLAIN_INTERVAL_S = 10.0


class PlainProgress:
    """tqdm's update / set_postfix / close, printed as one plain line every `interval` seconds."""

    def __init__(self, total: int | None, initial: int = 0, desc: str = "", unit: str = "it",
                 disable: bool = False, file=None, interval: float = PLAIN_INTERVAL_S):
        self.total, self.n, self.desc, self.unit = total, initial, desc, unit
        self.disable, self.file, self.interval = disable, file or sys.stderr, interval
        self.postfix = ""
        self.start_n, self.start = initial, time.perf_counter()
        self.last_print = self.start

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.perf_counter()
        if now - self.last_print >= self.interval:
            self._print(now)

    def set_postfix(self, **values) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        self._print(time.perf_counter())
        self.disable = True

    def _print(self, now: float) -> None:
        self.last_print = now
        if self.disable:
            return
        elapsed = now - self.start
        rate = (self.n - self.start_n) / elapsed if elapsed > 0 else 0.0
        of = f"/{self.total}" if self.total is not None else ""
        left = ""
        if self.total is not None and rate > 0:
            left = f", {(self.total - self.n) / rate:.0f} s left"
        extra = f", {self.postfix}" if self.postfix else ""
        print(f"{self.desc}: {self.n}{of} {self.unit} ({rate:.2f} {self.unit}/s, {elapsed:.0f} s{left}{extra})",
              file=self.file, flush=True)


def progress(total: int | None = None, initial: int = 0, desc: str = "", unit: str = "it", disable: bool = False,
             file=None, **tqdm_options):
    """A tqdm bar when `file` (default stderr) is a terminal, else a PlainProgress."""
    file = file or sys.stderr
    if hasattr(file, "isatty") and file.isatty():
        return tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=disable, file=file, **tqdm_options)
    return PlainProgress(total, initial, desc, unit, disable, file)
