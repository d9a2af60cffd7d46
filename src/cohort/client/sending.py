"""How a client sends tasks: to the controller in batches, or straight to engines.

Mixed into `client.Client` (needs its sockets, locks, session, pending
tables and `_direct`).
"""

from __future__ import annotations

import os

from ..errors import ControllerError
from ..wire import COPY, Payload, batch, send_frames
from .asyncresult import AsyncResult


class Sending:
    """The client's sending side (any user thread, and the I/O thread)."""

    def _send(self, *messages, batchable: bool = False) -> None:
        """Send messages (frame lists) in order, as one batch.

        `batchable` (tasks submitted while others are pending): queue them for
        the I/O thread, which sends everything queued as one batch when it
        next runs, so a burst of submits costs a few sends, not one each. An
        idle client sends at once: a lone call waits for nothing.
        """
        if self._closed:
            raise ControllerError("this client is closed")
        if batchable:
            with self._queue_lock:
                first = not self._outq
                self._outq.extend(messages)
            if first:
                os.write(self._wake_w, b"!")
            return
        self._flush(messages)  # after anything queued: order is kept

    def _flush(self, messages=()) -> None:
        """Send what is queued, then `messages`, as one batch."""
        with self._send_lock:
            self._flush_locked(messages)

    def _flush_locked(self, messages) -> None:
        copies = self._direct.due_copies()  # first: what the controller answers must know them
        if copies:
            self._send_copies(copies)
        with self._queue_lock:
            queued, self._outq = self._outq, []
        queued.extend(messages)
        if queued:
            send_frames(self._send_sock, batch(queued))

    def _send_tasks(self, kind: str, content, tasks: list, wait: bool = False):
        """Send (engine id, header, payload) tasks: each straight to its engine when
        it is on this host, with a copy to the controller (client/direct.py), the
        rest through the controller.

        `wait` (one task, whose answer the calling thread will wait for): return
        the channel it went over, for `_wait_on`, if it went over one."""
        if self._closed:
            raise ControllerError("this client is closed")
        with self._send_lock:
            routed = []
            for eid, header, payload in tasks:
                straight, fields = self._direct.plan(eid)
                channel = self._direct.channel(eid) if wait and straight else None
                header.update(fields)
                frames = self.session.build(kind, content, header=header, payload=payload)
                if straight and self._direct.send(eid, header["id"], frames, channel):
                    if channel is not None:
                        return eid, channel
                    continue
                if channel is not None:
                    self._direct.give_back(eid, channel)
                if straight:  # too large, or no room there now: after those that went
                    del header["dq"]
                    header.update(self._direct.behind(eid))
                    frames = self.session.build(kind, content, header=header, payload=payload)
                self._direct.routed(eid, header["id"])
                routed.append(frames)
            if routed:
                self._flush_locked(routed)
        return None

    def _wait_on(self, sent, ar) -> None:
        """Wait for `ar` (one task, `sent` over a channel by `_send_tasks`) reading
        its answer from that channel: the calling thread is woken by the engine
        itself. If the wait is cut short (an interrupt), the I/O thread takes over."""
        eid, channel = sent
        try:
            alive = channel.wait(ar, self._handle_all)
        except BaseException:
            with self._send_lock:
                self._direct.adopt(eid, channel)
            os.write(self._wake_w, b"!")
            raise
        with self._send_lock:
            if alive:
                self._direct.give_back(eid, channel)
            else:  # the engine is gone: the controller says what became of the task
                channel.close()

    def _send_copies(self, copies: list) -> None:
        """The controller's copies of tasks sent straight to engines (send lock held)."""
        send_frames(self._send_sock, [COPY, *batch(copies)])

    def _submit(self, kind: str, targets: list, content=None, objects=(), single=False,
                reduce=None, per_target=None, wait=False) -> AsyncResult:
        """Send one task per target engine; return their joint AsyncResult
        (`wait`: the caller waits for it; done if it could be waited for here)."""
        shared = self._shared_payloads(objects, targets) if per_target is None and objects else {}
        tasks, ids = [], []
        for eid in targets:
            use_shm = self._shm_with(eid)
            if per_target is not None:
                payload = Payload(per_target[eid], shm_ok=use_shm)
            else:
                payload = shared.get(use_shm)
            mid = self.session.msg_id()
            tasks.append((eid, {"id": mid, "target": eid, "rshm": self.shm, **self._reply_to},
                          payload))
            ids.append(mid)
        ar = AsyncResult(self, ids, targets, kind, single=single, reduce=reduce,
                         payloads=[p for p in shared.values() if p.shared])
        ar.quiet = getattr(self._quiet, "on", False)
        with self._pending_lock:
            for i, mid in enumerate(ids):
                self._pending[mid] = (ar, i)
        if tasks:
            try:
                sent = self._send_tasks(kind, content, tasks, wait=wait and len(tasks) == 1)
            except Exception:
                self._unpend(ids)
                raise
            if sent is not None:
                self._wait_on(sent, ar)
        return ar

    def _unpend(self, ids) -> None:
        """Tasks that were never sent, or withdrawn: nothing will answer them."""
        with self._pending_lock:
            for mid in ids:
                self._pending.pop(mid, None)
                self._resend.pop(mid, None)
                self._direct.answered(mid)

    def _submit_lb(self, objects, header: dict) -> AsyncResult:
        """Send one load-balanced task; the controller picks its engine."""
        mid = self.session.msg_id()
        # no shared memory for its arguments: a retry may send them again
        frames = self.session.build("apply", None, header=dict(header, id=mid, rshm=self.shm),
                                    payload=Payload(objects))
        ar = AsyncResult(self, [mid], [None], "apply", single=True)
        with self._pending_lock:
            busy = bool(self._pending)
            self._pending[mid] = (ar, 0)
            self._resend[mid] = frames
        try:
            self._send(frames, batchable=busy)
        except Exception:
            self._unpend([mid])
            raise
        return ar

    def _shm_with(self, eid) -> bool:
        e = self._engines.get(eid)
        return bool(self.shm and e is not None and e.get("shm"))

    def _shared_payloads(self, objects, targets) -> dict:
        """{True: payload for engines sharing our memory, False: for the rest}."""
        if len(targets) == 1:
            use_shm = self._shm_with(targets[0])
            return {use_shm: Payload(objects, shm_ok=use_shm)}
        n_shm = sum(self._shm_with(t) for t in targets)
        out = {}
        if n_shm:
            out[True] = Payload(objects, shm_ok=True, shared=n_shm > 1)
        if n_shm < len(targets):
            out[False] = Payload(objects)
        return out

