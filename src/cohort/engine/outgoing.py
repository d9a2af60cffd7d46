"""What an engine sends: output and results, to their client directly or through
the controller, held briefly to travel in batches.

Mixed into `kernel.Engine` (needs its sockets, `session`, `replies`, `_inbox`,
`_out_lock` and the held-result fields).
"""

from __future__ import annotations

import math
import time

import zmq

from ..wire import Payload, batch, send_frames

HOLD = 0.002  # seconds a finished task's result may wait to go back with others
# The controller's copies of quick direct tasks' outcomes (it learns of such a task
# from them alone) travel in batches within COPY_HOLD: a record a little later, for
# a controller woken once per batch instead of once per call.
COPY_HOLD = 0.02
# ... and at most this many at once: the controller records a batch in one go
# (~35 µs a copy here), taking a core from the calls that much longer
COPY_BATCH = 8
UNHEARD_AGE = 0.015  # seconds: younger than the client's COPY_DELAY, with a margin


class Outgoing:
    """The engine's sending side (main thread, output flusher, result flusher)."""

    def send(self, msg_type: str, content=None, objects=(), header=None, shm_ok=False) -> None:
        to = header.get("rto") if header else None  # its client waits for it directly
        if to is not None:  # "cp": the controller's copy, to record, not to pass on
            task_header, header = header, dict(header, cp=1)
            del header["rto"]
        payload = Payload(objects, shm_ok=shm_ok) if objects else None  # serialized once
        frames = self.session.build(msg_type, content, header=header, payload=payload)
        with self._out_lock:
            if to is not None:
                if self.replies.send(to, frames):
                    if msg_type == "result":
                        self._recent.append(frames)
                    # nobody waits for the copy: it goes with the others held, in order
                    self._held.append(frames)
                    if len(self._held) >= COPY_BATCH:
                        send_frames(self.out_sock, self._take_held())
                    elif self._inbox:  # within HOLD, with the results of the tasks waiting
                        self._flush_within(HOLD)
                    elif self._unheard(header):  # a batch within COPY_HOLD will do
                        self._flush_within(COPY_HOLD)
                    else:  # the controller tracks the task: when the main loop next goes idle
                        self._lazy = False
                    return
                # this and the task's later messages go the usual way (its header is the
                # capture's parent, shared by them all): they cannot overtake earlier ones
                task_header.pop("rto", None)
                del header["cp"]
                frames = self.session.build(msg_type, content, header=header, payload=payload)
            if msg_type == "result":
                if sum(memoryview(f).nbytes for f in frames) <= 1 << 20:
                    self._recent.append(frames)
                if self._hold():
                    self._held.append(frames)
                    self._waited += 1
                    self._lazy = False
                    self._flush_within(HOLD)
                    return
            if self._held:  # what was held goes first: order is kept
                self._held.append(frames)
                frames = self._take_held()
            send_frames(self.out_sock, frames)

    @staticmethod
    def _unheard(header: dict) -> bool:
        """A task sent here directly whose client, by the look of its age, has not
        sent the controller its copy yet (client/direct.py): the controller does
        not know of it, so nothing there waits for this copy of its outcome."""
        sub = header.get("sub")
        return isinstance(sub, float) and time.time() - sub < UNHEARD_AGE

    def _flush_within(self, seconds: float) -> None:
        """Have the result flusher send what is held within `seconds` at most."""
        if self._flush_at != math.inf and seconds >= COPY_HOLD:
            return  # it has a time, no later than this would be
        at = time.monotonic() + seconds
        if at < self._flush_at:
            self._flush_at = at
            self._held_event.set()

    def _hold(self) -> bool:
        """Hold a result back while at least as many tasks wait to run here as
        results are held: the controller gets results in batches, early enough
        to send the next tasks before this engine runs out."""
        return self._waited < len(self._inbox) and len(self._held) < 64

    def _take_held(self) -> list:
        held, self._held = self._held, []
        self._waited = 0
        self._lazy = True
        self._flush_at = math.inf
        return batch(held)

    def flush_results(self, idle: bool = False) -> None:
        """Send what is held (`idle`: unless it is only copies that may wait)."""
        with self._out_lock:
            if self._held and not (idle and self._lazy):
                send_frames(self.out_sock, self._take_held())

    def _result_flusher(self) -> None:
        """Held messages go by the time `_flush_within` set, whatever the next task does."""
        while not self._stop.is_set():
            at = self._flush_at
            wait = 0.5 if at == math.inf else at - time.monotonic()
            if wait > 0:
                self._held_event.wait(wait)  # set when an earlier time is set
                self._held_event.clear()
                continue
            try:
                self.flush_results()
            except zmq.ZMQError:  # closed at exit
                return

