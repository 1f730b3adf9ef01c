"""A command under a pseudo-terminal, and the screen a person would read from it.

`run_in_terminal` starts a process with stdin, stdout and stderr on a pty of a given size (as a
shell in a terminal window would) and collects what it writes. `Screen` replays that output the
way a terminal draws it, for the control sequences progress bars use: carriage return, new line,
erase line (CSI K), cursor up (CSI A), cursor to column (CSI G), colours and cursor visibility
(ignored). `Screen.lines` is the final screen, top to bottom; `Screen.seen` also keeps every line
as it looked before it was erased or overwritten, so a test can read a bar mid-run.
"""
from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import termios
import time
from dataclasses import dataclass, field
from typing import Mapping, Sequence

_CSI = re.compile(r"\x1b\[([?0-9;]*)([A-Za-z])")


@dataclass
class Screen:
    lines: list[str] = field(default_factory=lambda: [""])
    seen: list[str] = field(default_factory=list)
    row: int = 0
    col: int = 0

    def _line(self) -> str:
        while len(self.lines) <= self.row:
            self.lines.append("")
        return self.lines[self.row]

    def _put(self, text: str) -> None:
        line = self._line().ljust(self.col)
        self.lines[self.row] = line[:self.col] + text + line[self.col + len(text):]
        self.col += len(text)

    def _keep(self) -> None:
        if self._line().strip():
            self.seen.append(self._line().rstrip())

    def feed(self, text: str) -> None:
        pos = 0
        while pos < len(text):
            match = _CSI.match(text, pos)
            if match:
                args, command = match.groups()
                n = int(args) if args.isdigit() else 1
                if command == "K":  # erase line (the whole line for 2, the rest for 0)
                    self._keep()
                    self.lines[self.row] = "" if args == "2" else self._line()[:self.col]
                elif command == "A":
                    self.row = max(0, self.row - n)
                elif command == "G":
                    self.col = n - 1
                pos = match.end()
                continue
            char = text[pos]
            pos += 1
            if char == "\r":
                self.col = 0
            elif char == "\n":
                self.row += 1
                self.col = 0
                self._line()
            elif char == "\x1b":  # another escape (ESC 7, ESC 8 ...): skip its next character
                pos += 1
            elif char.isprintable():
                self._put(char)

    def text(self) -> str:
        return "\n".join(line.rstrip() for line in self.lines).strip("\n")


def run_in_terminal(argv: Sequence[str], *, env: Mapping[str, str] | None = None, columns: int = 150,
                    rows: int = 40, timeout: float = 300, cwd: str | None = None) -> tuple[int, Screen, str]:
    """Run `argv` on a fresh pty of `columns` x `rows`; (exit code, the screen, the raw output)."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    environment = {**os.environ, "TERM": "xterm-256color", "COLUMNS": str(columns), "LINES": str(rows),
                   **(env or {})}
    environment.pop("SUSY_PROGRESS", None)  # the terminal decides, as it would for a person
    process = subprocess.Popen(list(argv), stdin=follower, stdout=follower, stderr=follower, env=environment,
                               cwd=cwd, start_new_session=True)
    os.close(follower)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 1.0)
            if not ready:
                if process.poll() is not None:
                    break
                continue
            try:
                data = os.read(leader, 65536)
            except OSError:  # EIO: every writer has closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        else:
            process.kill()
            raise TimeoutError(f"{argv[:3]} still running after {timeout} s")
    finally:
        os.close(leader)
    code = process.wait(timeout=30)
    raw = b"".join(chunks).decode("utf-8", "replace")
    screen = Screen()
    screen.feed(raw)
    return code, screen, raw
