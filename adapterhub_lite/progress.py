"""One progress display for every long job: training, zoo builds, sampling, streamed fuses.

Our own forty lines rather than tqdm or rich: a long job must report into a
log file as well as a terminal, and both libraries redraw with carriage
returns there. On a terminal the line is redrawn in place (at most 10 times a
second); anywhere else a whole line is written at most every
`PIPED_INTERVAL` seconds, and the last one always, each flushed, so
`adapters zoo build > build.log` shows the job as it runs. Everything goes to
stderr: `--json` output on stdout stays clean. `set_quiet(True)` (the CLI's
`--quiet`, or ADAPTERS_QUIET=1) silences it.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, TextIO

PIPED_INTERVAL = 5.0  # seconds between lines when stderr is not a terminal
_quiet = [os.environ.get("ADAPTERS_QUIET", "") not in ("", "0")]


def set_quiet(quiet: bool) -> None:
    """Silence (or restore) every progress display of this process."""
    _quiet[0] = quiet


def is_quiet() -> bool:
    return _quiet[0]


class Progress:
    """`done` of `total` units of one job, with a rate, an ETA and any figures worth showing (e.g. the loss).

    Use as a context manager, or call `close()`; `update(done, loss=...)` as often as you like: it draws only
    when a line is due."""

    def __init__(self, total: int, label: str, unit: str = "steps", stream: TextIO | None = None,
                 enabled: bool = True) -> None:
        self.total, self.label, self.unit = max(int(total), 0), label, unit
        self.stream = stream or sys.stderr
        self.enabled = enabled and not is_quiet()
        self.interactive = self.enabled and self.stream.isatty()
        self.started = self.last = time.perf_counter()
        self.done, self.fields, self.drawn = 0, {}, False

    def update(self, done: int, **fields: Any) -> None:
        self.done, self.fields = done, fields
        if not self.enabled:
            return
        now = time.perf_counter()
        if now - self.last >= (0.1 if self.interactive else PIPED_INTERVAL):
            self._draw(now)

    def close(self) -> None:
        if self.enabled and self.done:
            self._draw(time.perf_counter(), final=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()
        elif self.interactive and self.drawn:
            self.stream.write("\n")  # leave the partial line; the error prints below it

    def line(self, now: float, final: bool = False) -> str:
        elapsed = max(now - self.started, 1e-9)
        rate = self.done / elapsed
        filled = int(24 * self.done / self.total) if self.total else 24
        text = f"{self.label} [{'#' * filled}{'.' * (24 - filled)}] {self.done}/{self.total} {self.unit}"
        if final:
            text += f" in {_clock(elapsed)}"
        else:
            left = (self.total - self.done) / rate if rate > 0 else 0.0
            text += f" {rate:.3g} {self.unit}/s ETA {_clock(left)}"
        return text + "".join(f" {k} {v:.4g}" if isinstance(v, float) else f" {k} {v}" for k, v in self.fields.items())

    def _draw(self, now: float, final: bool = False) -> None:
        self.last, self.drawn = now, True
        text = self.line(now, final)
        if self.interactive:
            self.stream.write("\r\x1b[2K" + text + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"
