"""Progress for long work: a tqdm bar on a terminal, a log line every few seconds elsewhere.

In a log file or CI, a tqdm bar writes one carriage-return update per step (thousands of them in
one line). ``progress_bar(...)`` returns tqdm when stderr is a terminal and otherwise a
``LogProgress`` with the same small interface (``update``, ``set_postfix``, ``write``, ``close``)
that logs ``desc: n/total unit (p%), rate, ETA`` at most every ``interval`` seconds, and once at
the end.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

log = logging.getLogger(__name__)

LOG_INTERVAL_S = 10.0  # seconds between two progress lines when stderr is not a terminal


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class LogProgress:
    """tqdm's interface, reporting through ``logging`` at most every ``interval`` seconds.

    Args:
        total: the amount of work, or None when unknown (no percentage or ETA then).
        desc: what is being done (starts each line).
        unit: the unit of ``update(n)``.
        initial: work already done (a resumed run).
        interval: seconds between lines.
        disable: report nothing.
    """

    def __init__(
        self,
        total: float | None = None,
        *,
        desc: str = "",
        unit: str = "it",
        initial: float = 0,
        interval: float = LOG_INTERVAL_S,
        disable: bool = False,
        unit_scale: bool = False,
        **_: Any,
    ) -> None:
        self.total, self.desc, self.n = total, desc, initial
        self._scale = 2**20 if unit_scale and unit == "B" else 1  # bytes shown in MiB
        self.unit = "MiB" if self._scale > 1 else unit
        self.interval, self.disable = interval, disable
        self._start_n, self._t0 = initial, time.monotonic()
        self._last = self._t0
        self._postfix = ""
        self._logged_n: float | None = None

    def line(self) -> str:
        """The progress line as it would be logged now."""
        elapsed = time.monotonic() - self._t0
        rate = (self.n - self._start_n) / elapsed / self._scale if elapsed > 0 else 0.0
        parts = [f"{self.desc}: " if self.desc else "", f"{self.n / self._scale:.4g}"]
        if self.total:
            parts.append(
                f"/{self.total / self._scale:.4g} {self.unit} ({100 * self.n / self.total:.0f}%)"
            )
        else:
            parts.append(f" {self.unit}")
        parts.append(f", {rate:.3g} {self.unit}/s, elapsed {_duration(elapsed)}")
        if self.total and rate > 0:
            parts.append(f", ETA {_duration((self.total - self.n) / self._scale / rate)}")
        if self._postfix:
            parts.append(f", {self._postfix}")
        return "".join(parts)

    def _emit(self) -> None:
        if not self.disable and self._logged_n != self.n:
            log.info(self.line())
            self._logged_n = self.n

    def update(self, n: float = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._emit()

    def set_postfix(self, **kw: Any) -> None:
        self._postfix = " ".join(f"{k}={v}" for k, v in kw.items())

    def set_description(self, desc: str) -> None:
        self.desc = desc

    def write(self, text: str) -> None:
        if not self.disable:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.n != self._start_n:
            self._emit()
        self.disable = True

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class LogHandler(logging.StreamHandler):
    """A stderr handler that prints through ``tqdm.write`` on a terminal, so that a log line (or
    a captured warning) never breaks a progress bar in two."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr  # the current stderr (it may have been replaced since set-up)
        try:
            interactive = self.stream.isatty()
        except (ValueError, AttributeError):
            interactive = False
        if not interactive:
            return super().emit(record)
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=self.stream)
        except Exception:
            self.handleError(record)


def progress_bar(total: float | None = None, *, interactive: bool | None = None, **kw: Any) -> Any:
    """A tqdm bar when stderr is a terminal (``interactive``), else a ``LogProgress``.

    Keyword arguments are tqdm's (``desc``, ``unit``, ``initial``, ``disable``, ...).
    """
    if interactive is None:
        interactive = sys.stderr.isatty()
    if interactive:
        from tqdm import tqdm

        return tqdm(total=total, dynamic_ncols=True, **kw)
    return LogProgress(total, **kw)


__all__ = ["LOG_INTERVAL_S", "LogHandler", "LogProgress", "progress_bar"]
