"""Progress that reads well on a terminal and in a log file.

On a terminal a live bar (tqdm, when installed) redraws one line. Written to a file or a pipe, a
redrawn bar becomes one line full of carriage returns; there `Progress` writes a plain line every
``every_s`` seconds and one at the end instead.

Examples:
    >>> with Progress(total=3, desc="configs", stream=log_file) as bar:   # doctest: +SKIP
    ...     for _ in range(3):
    ...         bar.update()
"""
from __future__ import annotations

import sys
import time


def is_terminal(stream) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except (ValueError, OSError):   # a closed stream
        return False


class Progress:
    """Counts steps towards ``total``; a tqdm bar on a TTY, periodic plain lines elsewhere.

    Args:
        total: number of steps expected (None: unknown).
        desc: what is being counted, printed at the start of each line.
        unit: the step's name (``"step"``, ``"cfg"``).
        stream: where to write (default ``sys.stderr``).
        every_s: seconds between plain lines when not on a terminal.
        enabled: ``False`` writes nothing.
    """

    def __init__(self, total: int | None = None, desc: str = "", unit: str = "step", stream=None,
                 every_s: float = 10.0, enabled: bool = True):
        if total is not None and (isinstance(total, bool) or not isinstance(total, int) or total < 0):
            raise ValueError(f"Expected total as an int >= 0 or None, received: {total!r}")
        if not every_s > 0:
            raise ValueError(f"Expected every_s > 0, received: {every_s!r}")
        self.total, self.desc, self.unit = total, desc, unit
        self.stream = stream if stream is not None else sys.stderr
        self.every_s, self.enabled = float(every_s), bool(enabled)
        self.count = 0
        self.postfix = ""
        self._start = self._last = time.monotonic()
        self._bar = None
        if self.enabled and is_terminal(self.stream):
            try:
                from tqdm.auto import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self._bar = tqdm(total=total, desc=desc, unit=unit, file=self.stream, leave=False,
                                 dynamic_ncols=True)

    def update(self, n: int = 1, postfix: str | None = None) -> None:
        self.count += n
        if postfix is not None:
            self.postfix = postfix
        if not self.enabled:
            return
        if self._bar is not None:
            if postfix is not None:
                self._bar.set_postfix_str(postfix, refresh=False)
            self._bar.update(n)
            return
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._last = now
            self._line()

    def _line(self, final: bool = False) -> None:
        done = f"{self.count}/{self.total}" if self.total is not None else str(self.count)
        elapsed = time.monotonic() - self._start
        tail = f" {self.postfix}" if self.postfix else ""
        word = "done" if final else "…"
        self.stream.write(f"{self.desc}: {done} {self.unit}s {word} ({elapsed:.0f} s){tail}\n")
        self.stream.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.count:
            self._line(final=True)
        self.enabled = False

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
