"""Output of the ``importhooks`` command that a reader may stop reading (``| head -1``) or never open (``>&-``)."""

from __future__ import annotations

import io
import os
from typing import IO, Protocol


class Clears(Protocol):
    """Something drawn on the terminal that must be erased before a line is printed (the progress bar)."""

    def clear(self) -> None: ...


class Output:
    """Lines to ``stream``; once its reader is gone (a broken pipe), lines are dropped, not errors."""

    def __init__(self, stream: IO[str], progress: Clears | None = None) -> None:
        self.stream = stream
        self.progress = progress
        self.closed = False

    def line(self, text: str) -> None:
        if self.closed:
            return
        try:
            if self.progress is not None:
                self.progress.clear()
            self.stream.write(text + "\n")
            self.stream.flush()
        except BrokenPipeError:
            self.closed = True
            silence(self.stream)


def silence(stream: IO[str]) -> None:
    """Point a closed pipe's descriptor at /dev/null so the interpreter's final flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, stream.fileno())
        finally:
            os.close(devnull)
    except (OSError, ValueError, io.UnsupportedOperation):  # not a real file (tests) or already closed
        pass
