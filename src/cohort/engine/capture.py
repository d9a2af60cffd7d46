"""Capture of stdout/stderr on an engine, streamed to the client that ran the task.

Text written during a task is buffered per stream and sent as ``stream``
messages: by a flusher thread every `interval` seconds (so a long task's
output shows up while it runs) and by the engine itself before each result,
on the same socket, so all of a task's output reaches the client before its
result does.
"""

from __future__ import annotations

import io
import threading


class OutputCapture:
    """Collects text from both streams; `send(name, text, parent)` ships it."""

    def __init__(self, send, interval: float = 0.1, limit: int = 1 << 16,
                 max_task_output: int = 16 << 20):
        self._send = send
        self.interval = interval
        self.limit = limit
        self.max_task_output = max_task_output
        self._task_chars = 0
        self._dropped = 0
        self._lock = threading.Lock()
        self._sending = threading.Lock()  # a flush's take-and-send is one step
        self._pending: list = []  # [name, text] in write order
        self._size = 0
        self.parent: dict | None = None
        self._wake = threading.Event()
        self._closed = False
        self.stdout = _Stream(self, "stdout")
        self.stderr = _Stream(self, "stderr")
        self._thread = threading.Thread(target=self._run, name="cohort-output", daemon=True)
        self._thread.start()

    def begin(self, parent: dict) -> None:
        """A task starts: what is written from now on is its output."""
        if self._unsent():  # written since the last task ended (by a thread of its own)
            self.flush()
        with self._lock:
            self.parent = parent
            self._task_chars = self._dropped = 0

    def end(self) -> None:
        """A task ends: send all its output (and say what was dropped) before its result."""
        if self._dropped:
            with self._lock:
                self._pending.append(["stderr", f"\n[cohort: {self._dropped} more characters of output "
                                      f"were dropped; a task sends at most {self.max_task_output}]\n"])
                self._dropped = 0
        if self._unsent():
            self.flush()

    def _unsent(self) -> bool:
        """Output waits to be sent, or the output thread is sending some (in that
        order: it takes what waits, then sends it, holding `_sending`)."""
        return bool(self._pending) or self._sending.locked()

    def write(self, name: str, text: str) -> None:
        with self._lock:
            if self._task_chars >= self.max_task_output:  # a runaway print loop must not flood the cluster
                self._dropped += len(text)
                return
            self._task_chars += len(text)
            if self._pending and self._pending[-1][0] == name:
                self._pending[-1][1] += text
            else:
                self._pending.append([name, text])
            self._size += len(text)
            big = self._size >= self.limit
        if big:
            self.flush()
        else:
            self._wake.set()

    def flush(self) -> None:
        """Send what is pending; returns once it is on the socket."""
        with self._sending:
            with self._lock:
                pending, self._pending, self._size = self._pending, [], 0
                parent = self.parent
            if parent is None:
                return
            for name, text in pending:
                if text:
                    self._send(name, text, parent)

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait()
            self._wake.clear()
            if self._closed:
                return
            self._wake.wait(self.interval)  # gather a little more before sending
            try:
                self.flush()
            except Exception:  # a closed socket at exit
                return

    def close(self) -> None:
        self._closed = True
        self._wake.set()


class _Stream(io.TextIOBase):
    def __init__(self, capture: OutputCapture, name: str):
        self._capture = capture
        self.name = name

    def writable(self) -> bool:
        return True

    def write(self, text) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        if text:
            self._capture.write(self.name, text)
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False

    @property
    def encoding(self) -> str:
        return "utf-8"
