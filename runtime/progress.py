"""Progress on stderr for long operator commands: a bar when the total is known, a count when not."""

from __future__ import annotations

import sys
from typing import TextIO


class ProgressBar:
    def __init__(self, label: str, stream: TextIO | None = None, width: int = 30) -> None:
        self._label = label
        self._stream = stream or sys.stderr  # looked up now, not at import: callers may redirect it
        self._width = width

    def __call__(self, done: int, total: int) -> None:
        filled = self._width * done // total if total else self._width
        self._stream.write(f"\r{self._label} [{'#' * filled}{'.' * (self._width - filled)}] {done}/{total}")
        if done >= total:
            self._stream.write("\n")
        self._stream.flush()


class ProgressCounter:
    """A running count on stderr, for streams whose total is not known in advance."""

    def __init__(self, label: str, stream: TextIO | None = None) -> None:
        self._label = label
        self._stream = stream or sys.stderr

    def __call__(self, done: int) -> None:
        self._stream.write(f"\r{self._label}: {done} event(s)")
        self._stream.flush()
