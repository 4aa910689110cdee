"""Group commit: many concurrent inbox writes share one transaction and one fsync.

Each caller hands its message to a single writer thread and waits for its receipt.
The writer takes whatever has queued up (at most ``max_batch``; if only one message
is waiting it lingers up to ``max_wait`` for company), stores the group in one
transaction and only then answers every caller. Nobody is answered before the commit,
so an acknowledgement sent on a receipt is still a durable one; under load a burst of
N messages costs one fsync instead of N.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from concurrent.futures import Future
from types import TracebackType

from hub.store.inbox import Inbox
from hub.store.records import IncomingMessage, Receipt

log = logging.getLogger("hub.store")

_STOP = object()


class GroupCommitWriter:
    """A writer thread in front of :meth:`Inbox.receive_many`.

    Use as a context manager, or call :meth:`start` / :meth:`close`. ``close`` drains
    what is queued before it returns.
    """

    def __init__(self, inbox: Inbox, *, max_batch: int = 256, max_wait: float = 0.0) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        if max_wait < 0:
            raise ValueError("max_wait must not be negative")
        self._inbox = inbox
        self._max_batch = max_batch
        self._max_wait = max_wait
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.commits = 0
        self.messages = 0

    def start(self) -> GroupCommitWriter:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="inbox-group-commit", daemon=True)
            self._thread.start()
        return self

    def __enter__(self) -> GroupCommitWriter:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def submit(self, message: IncomingMessage) -> Future[Receipt]:
        """Queue ``message``; the future resolves once it is committed (or fails)."""
        if self._closed:
            raise RuntimeError("the group commit writer is closed")
        self.start()
        future: Future[Receipt] = Future()
        self._queue.put((message, future))
        return future

    def receive(self, message: IncomingMessage, timeout: float | None = 30.0) -> Receipt:
        """Store ``message`` and block until it is durable."""
        return self.submit(message).result(timeout)

    async def receive_async(self, message: IncomingMessage) -> Receipt:
        """Store ``message`` without blocking the event loop; returns once durable."""
        return await asyncio.wrap_future(self.submit(message))

    def close(self, timeout: float = 30.0) -> None:
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join(timeout)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                break
            batch = [first]
            if self._max_wait and self._queue.empty():
                time.sleep(self._max_wait)
            while len(batch) < self._max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                    break
                batch.append(item)
            self._commit(batch)

    def _commit(self, batch: list[object]) -> None:
        pairs: list[tuple[IncomingMessage, Future[Receipt]]] = [item for item in batch]  # type: ignore[misc]
        live = [(m, f) for m, f in pairs if f.set_running_or_notify_cancel()]
        if not live:
            return
        try:
            receipts = self._inbox.receive_many([m for m, _ in live])
        except Exception as exc:  # noqa: BLE001 - every waiter must hear about the failure
            log.error("inbox group commit failed", extra={"event": "inbox_commit_failed", "size": len(live)})
            for _, future in live:
                future.set_exception(exc)
            return
        self.commits += 1
        self.messages += len(live)
        for (_, future), receipt in zip(live, receipts, strict=True):
            future.set_result(receipt)
