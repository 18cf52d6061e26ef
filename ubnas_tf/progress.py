"""Progress output of `fit` that fits a terminal, and errors that start a line of their own.

Keras' progress bar prints every value a step logs, at a fixed bar width, so a step that logs
more than a couple of figures wraps, and a wrapped line redrawn with ``\\r`` leaves a trail.
`ProgressBar` takes its place in `fit`: the model's losses and accuracies only (its
`metrics`, and their ``val_`` versions at an epoch's end), the bar narrowed so that the line
stays within `COLUMNS` (or a narrower terminal). Whatever else a callback adds to an epoch's
logs (e.g. `ubnas_tf.search.callbacks.ArchitectureFigures`) still reaches History and
TensorBoard, but is not printed here.

A progress line has no newline until its epoch ends; an exception raised during the epoch
would print its message after the bar, on the same line. `end_line` ends a line left open,
so what follows starts a line of its own; `ubnas_tf.rundir.fit_resumable` runs `fit` within
`errors_on_own_line`, which calls it when an exception comes out.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import time
from collections.abc import Mapping
from typing import TextIO

import numpy as np
import tensorflow as tf

__all__ = ["COLUMNS", "ProgressBar", "end_line", "errors_on_own_line", "eta_text",
           "progress_line", "took_text"]

COLUMNS = 120
BAR_WIDTH = 30  # Keras' width, when the line has room for it
MIN_BAR_WIDTH = 10  # narrower says too little: the line goes without a bar

# The stream a progress line was left open on (no newline yet), or None.
_open_stream: TextIO | None = None


def end_line() -> None:
    """Ends a progress line left open, if any, so the next output starts a line of its own."""
    global _open_stream
    if _open_stream is not None:
        stream, _open_stream = _open_stream, None
        stream.write("\n")
        stream.flush()


@contextlib.contextmanager
def errors_on_own_line():
    """Within it, an exception first ends a progress line left open, so that its message
    (or traceback) starts a line of its own."""
    try:
        yield
    except BaseException:
        end_line()
        raise


def _number(value: float) -> str:
    # As Keras prints them, but 0 as 0.0000 (an accuracy often is, at first).
    return f"{value:.4f}" if value == 0 or abs(value) > 1e-3 else f"{value:.4e}"


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    if seconds >= 3600:
        return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
    if seconds >= 60:
        return f"{seconds // 60}:{seconds % 60:02d}"
    return f"{seconds}s"


def eta_text(seconds: float) -> str:
    """``ETA: 1:21``: the time left in an epoch."""
    return f"ETA: {_duration(seconds)}"


def took_text(seconds: float, steps: int) -> str:
    """``197s 3s/step``: how long a finished epoch took, in all and per step."""
    per_step = seconds / max(steps, 1)
    if per_step >= 1:
        rate = f"{per_step:.0f}s/step"
    elif per_step >= 1e-3:
        rate = f"{per_step * 1e3:.0f}ms/step"
    else:
        rate = f"{per_step * 1e6:.0f}us/step"
    return f"{seconds:.0f}s {rate}"


def progress_line(step: int, steps: int | None, values: Mapping[str, float], timing: str, *,
                  bar: bool = True, width: int = BAR_WIDTH, columns: int = COLUMNS) -> str:
    """One progress line of at most `columns` characters, as Keras lays it out:
    ``17/62 [=====>......] - ETA: 1:21 - loss: 2.1590 - accuracy: 0.2005``.

    `timing` is `eta_text` or `took_text`. The bar takes the room the rest leaves, up to
    `width`; with less than `MIN_BAR_WIDTH` it is left out, then values from the end, and a
    line still too long is cut.
    """
    count = f"{step:>{len(str(steps))}d}/{steps}" if steps else f"{step}"
    parts = [f"{name}: {_number(value)}" for name, value in values.items()]
    rest = "".join(f" - {p}" for p in [timing, *parts])
    width = min(width, columns - len(count) - len(" []") - len(rest))
    if bar and steps and width >= MIN_BAR_WIDTH:
        done = min(int(width * step / steps), width)
        filled = ("=" * (done - 1) + (">" if step < steps else "=")) if done else ""
        count += f" [{filled}{'.' * (width - len(filled))}]"
    while parts and len(count) + len(rest) > columns:
        parts.pop()
        rest = "".join(f" - {p}" for p in [timing, *parts])
    return (count + rest)[:columns]


class ProgressBar(tf.keras.callbacks.ProgbarLogger):
    """Keras' progress bar for `fit`, showing only the losses and accuracies, within
    `COLUMNS` columns (see the module docstring).

    A `ProgbarLogger`, so `fit` uses it in place of its own and its ``verbose`` applies:
    0 silent, 1 a line redrawn after each step (at most every `interval` seconds), 2 one
    line per epoch. On a stream that is not a terminal (a log file) nothing is redrawn: a
    line every `interval` seconds (60 by default), then the epoch's last.

    Args:
        columns: the widest a line may be; None: `COLUMNS`, or the terminal's width if less.
        stream: where to print; None: ``sys.stdout`` at the time of printing.
        interval: the fewest seconds between two lines of one epoch; None: 0.1 on a
            terminal, 60 otherwise.
    """

    def __init__(self, columns: int | None = None, stream: TextIO | None = None,
                 interval: float | None = None):
        super().__init__(count_mode="steps")
        self.columns = columns
        self.stream = stream
        self.interval = interval
        self._start = self._last_line = 0.0
        self._first: tuple[int, float] | None = None  # steps and time at the first step's end
        self._step = 0  # steps run in this epoch (known with verbose=1 only)
        self._drawn = 0  # length of the line on screen, blanked if the next one is shorter
        self._width = BAR_WIDTH  # the bar's, kept as narrow as it had to be in this epoch

    # -- what and where ----------------------------------------------------------------------

    def _out(self) -> TextIO:
        return self.stream if self.stream is not None else sys.stdout

    def _terminal(self) -> bool:
        isatty = getattr(self._out(), "isatty", None)
        return bool(isatty and isatty())

    def _columns(self) -> int:
        if self.columns is not None:
            return self.columns
        if self._terminal():
            return min(COLUMNS, shutil.get_terminal_size((COLUMNS, 24)).columns)
        return COLUMNS

    def _shown(self, logs: Mapping | None) -> dict[str, float]:
        """The losses and accuracies of `logs`: the model's metrics, validation's included."""
        names = {m.name for m in self.model.metrics} if self.model is not None else set()
        names |= {f"val_{n}" for n in names}
        shown = {}
        for name, value in (logs or {}).items():
            value = np.asarray(value)
            if name in names and value.ndim == 0:
                shown[name] = float(value)
        return shown

    def _line(self, step: int, logs: Mapping | None, timing: str, bar: bool = True) -> str:
        line = progress_line(step, self.target, self._shown(logs), timing, bar=bar,
                             width=self._width, columns=self._columns())
        if "[" in line:
            # The next lines keep this width: a bar that widens and narrows as the ETA's
            # digits come and go would be hard to read.
            self._width = line.index("]") - line.index("[") - 1
        return line

    def _print(self, line: str, final: bool) -> None:
        global _open_stream
        out = self._out()
        if self._terminal():
            out.write("\r" + line + " " * max(0, self._drawn - len(line)))
            self._drawn = 0 if final else len(line)
            if final:
                out.write("\n")
            _open_stream = None if final else out
        else:
            out.write(line + "\n")
        out.flush()

    # -- Keras hooks -------------------------------------------------------------------------

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()
        self._last_line = self._start
        self._first = None
        self._step = self._drawn = 0
        self._width = BAR_WIDTH
        if self.verbose and self.epochs > 1:
            end_line()
            self._out().write(f"Epoch {epoch + 1}/{self.epochs}\n")
            self._out().flush()

    def on_train_batch_end(self, batch, logs=None):
        # Called with verbose=1 only (ProgbarLogger.set_params); batch: the last step run.
        now, step = time.perf_counter(), int(batch) + 1
        self._step = step
        if self._first is None:
            self._first = (step, now)  # the first step includes tracing: not in the ETA
        interval = self.interval if self.interval is not None else (
            0.1 if self._terminal() else 60.0)
        if now - self._last_line < interval or (self.target and step >= self.target):
            return  # the epoch's end prints its last line
        self._last_line = now
        first_steps, first_time = self._first
        if step > first_steps:
            per_step = (now - first_time) / (step - first_steps)
        else:
            per_step = (now - self._start) / step
        left = per_step * (self.target - step) if self.target else 0.0
        timing = eta_text(left) if self.target else took_text(now - self._start, step)
        self._print(self._line(step, logs, timing), final=False)

    def on_epoch_end(self, epoch, logs=None):
        if not self.verbose:
            return
        steps = self.target or self._step
        took = took_text(time.perf_counter() - self._start, steps)
        self._print(self._line(steps, logs, took, bar=self.verbose == 1), final=True)
