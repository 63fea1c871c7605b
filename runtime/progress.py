"""Progress on stderr for long operator commands: a bar when the total is known, a count when not."""

from __future__ import annotations

import sys
from typing import TextIO


class _Line:
    """One status line redrawn in place; leaving the `with` ends it with a newline if it was drawn."""

    def __init__(self, stream: TextIO | None) -> None:
        self._stream = stream or sys.stderr  # looked up now, not at import: callers may redirect it
        self._open = False

    def _draw(self, text: str) -> None:
        self._stream.write(f"\r{text}")
        self._stream.flush()
        self._open = True

    def close(self) -> None:
        if self._open:
            self._stream.write("\n")
            self._stream.flush()
            self._open = False

    def __enter__(self):
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class ProgressBar(_Line):
    def __init__(self, label: str, stream: TextIO | None = None, width: int = 30) -> None:
        super().__init__(stream)
        self._label = label
        self._width = width

    def __call__(self, done: int, total: int) -> None:
        filled = self._width * done // total if total else self._width
        self._draw(f"{self._label} [{'#' * filled}{'.' * (self._width - filled)}] {done}/{total}")


class ProgressCounter(_Line):
    """A running count on stderr, for streams whose total is not known in advance."""

    def __init__(self, label: str, stream: TextIO | None = None) -> None:
        super().__init__(stream)
        self._label = label

    def __call__(self, done: int) -> None:
        self._draw(f"{self._label}: {done} event(s)")
