"""What an engine sends: output and results, to their client directly or through
the controller, held briefly to travel in batches.

Mixed into `kernel.Engine` (needs its sockets, `session`, `replies`, `_inbox`,
`_out_lock` and the held-result fields).
"""

from __future__ import annotations

import time

import zmq

from ..wire import Payload, batch, send_frames

HOLD = 0.002  # seconds a finished task's result may wait to go back with others


class Outgoing:
    """The engine's sending side (main thread, output flusher, result flusher)."""

    def send(self, msg_type: str, content=None, objects=(), header=None, shm_ok=False) -> None:
        to = header.get("rto") if header else None  # its client waits for it directly
        if to is not None:  # "cp": the controller's copy, to record, not to pass on
            task_header, header = header, {k: v for k, v in header.items() if k != "rto"}
            header["cp"] = 1
        payload = Payload(objects, shm_ok=shm_ok) if objects else None  # serialized once
        frames = self.session.build(msg_type, content, header=header, payload=payload)
        with self._out_lock:
            if to is not None:
                if self.replies.send(to, frames):
                    if msg_type == "result":
                        self._recent.append(frames)
                    # nobody waits for the copy: it goes with the others held, in order,
                    # when the main loop next goes idle, or within HOLD if tasks wait
                    # (not waking the flusher for every quick task's copy)
                    self._held.append(frames)
                    if len(self._held) >= 64:
                        send_frames(self.out_sock, self._take_held())
                    elif self._inbox and not self._held_event.is_set():
                        self._held_event.set()
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
                    if not self._held_event.is_set():
                        self._held_event.set()
                    return
            if self._held:  # what was held goes first: order is kept
                self._held.append(frames)
                frames = self._take_held()
            send_frames(self.out_sock, frames)

    def _hold(self) -> bool:
        """Hold a result back while at least as many tasks wait to run here as
        results are held: the controller gets results in batches, early enough
        to send the next tasks before this engine runs out."""
        return self._waited < len(self._inbox) and len(self._held) < 64

    def _take_held(self) -> list:
        held, self._held = self._held, []
        self._waited = 0
        return batch(held)

    def flush_results(self) -> None:
        with self._out_lock:
            if self._held:
                send_frames(self.out_sock, self._take_held())

    def _result_flusher(self) -> None:
        """Held results go back within `HOLD` seconds, whatever the next task does."""
        while not self._stop.is_set():
            if not self._held_event.wait(0.5):
                continue
            self._held_event.clear()
            time.sleep(HOLD)
            try:
                self.flush_results()
            except zmq.ZMQError:  # closed at exit
                return

