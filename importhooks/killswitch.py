"""The kill switch: halt every import at once without touching the trusted upload path."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from .settings import Settings


class KillSwitch:
    """Halted while the ``halt`` setting is true, :meth:`halt` was called, or ``halt_file`` exists.

    The halt file lets an operator stop imports on a running service with ``touch``
    and resume with ``rm``, no restart. A server checks :meth:`is_halted` before
    accepting stage and import calls; the pipeline checks it at every stage boundary
    and while plugins read data.
    """

    def __init__(self, *, halted: bool = False, halt_file: Path | None = None) -> None:
        self._halted = threading.Event()
        if halted:
            self._halted.set()
        self.halt_file = halt_file

    @classmethod
    def from_settings(cls, settings: Settings) -> KillSwitch:
        """A switch set by the ``halt`` setting and watching ``halt_file``."""
        return cls(halted=settings.halt, halt_file=settings.halt_file)

    def halt(self) -> None:
        """Halt imports now (e.g. from an admin API), until :meth:`resume`."""
        self._halted.set()

    def resume(self) -> None:
        """Undo :meth:`halt` and a ``halt = true`` setting until restart; the halt file stays the operator's."""
        self._halted.clear()

    def is_halted(self) -> bool:
        """Whether imports are halted right now."""
        if self._halted.is_set():
            return True
        return self.halt_file is not None and os.path.lexists(self.halt_file)
