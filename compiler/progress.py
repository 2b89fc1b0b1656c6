"""What a build says while it runs: one line per stage (load, passes, pruning, calibration,
compile, tune, verify), as a live status on a terminal (rich) and as plain lines when stderr
is a file or a pipe (CI logs). The API builds silently unless given one."""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager, nullcontext
from typing import Iterator, Protocol


class Progress(Protocol):
    def stage(self, name: str, detail: str = ""): ...

    def note(self, text: str) -> None: ...


class Silent:
    def stage(self, name: str, detail: str = ""):
        return nullcontext()

    def note(self, text: str) -> None:
        return None


class Console:
    """Stages on stderr: a spinner with the elapsed time on a terminal, lines otherwise."""

    def __init__(self, stream=None) -> None:
        from rich.console import Console as RichConsole

        self.stream = stream or sys.stderr
        self.console = RichConsole(file=self.stream, highlight=False)
        self.live = self.console.is_terminal

    @contextmanager
    def stage(self, name: str, detail: str = "") -> Iterator[None]:
        text = f"{name}{': ' + detail if detail else ''}"
        start = time.perf_counter()
        if self.live:
            with self.console.status(f"[bold]{text}[/bold] ..."):
                yield
            seconds = time.perf_counter() - start
            self.console.print(f"  [green]done[/green] {text} ({seconds:.1f} s)")
        else:
            print(f"compress: {text} ...", file=self.stream, flush=True)
            yield
            print(f"compress: {name} done ({time.perf_counter() - start:.1f} s)",
                  file=self.stream, flush=True)

    def note(self, text: str) -> None:
        if self.live:
            self.console.print(f"  {text}")
        else:
            print(f"compress: {text}", file=self.stream, flush=True)
