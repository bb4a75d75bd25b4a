"""The server: listening socket, store start-up and replay, timers, shutdown."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import TYPE_CHECKING

from gearstore import __version__
from gearstore.engine.core import Engine, EngineOptions
from gearstore.engine.model import JobState
from gearstore.server.admin import Admin
from gearstore.server.connection import Connection
from gearstore.stores import create_store
from gearstore.stores.base import QueueStore, StoredJob
from gearstore.writer import StoreWriter, to_stored

if TYPE_CHECKING:
    from gearstore.config import Config

log = logging.getLogger("gearstore.server")


class Server:
    """One gearstore server on one event loop."""

    def __init__(self, config: Config, store: QueueStore | None = None) -> None:
        self.config = config
        self.loop = asyncio.get_running_loop()
        self._store = store
        self.writer: StoreWriter | None = None
        self.engine = Engine(
            EngineOptions(
                handle_prefix=config.handle_prefix,
                job_retries=config.job_retries,
                worker_wakeup=config.worker_wakeup,
                round_robin=config.round_robin,
                exceptions=config.exceptions,
            ),
            on_timer=self._timer_set,
        )
        self.admin = Admin(self.engine, self.request_stop, lambda: config.verbose)
        self.connections: set[Connection] = set()
        self._dirty: list[Connection] = []
        self._flush_scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self._listener: asyncio.Server | None = None
        self._stop = asyncio.Event()
        self.graceful = True
        self.port = 0
        self.replayed = 0
        self._replayed_ids: set[int] = set()

    # ------------------------------------------------------------- start-up

    async def start(self) -> None:
        """Open and replay the store, then start accepting connections."""
        if self._store is None and self.config.persistent:
            self._store = create_store(self.config.store_config())
        store = self._store
        if store is not None:
            started = time.monotonic()
            stored = await self.loop.run_in_executor(None, self._open_and_replay, store)
            for job in stored:
                self.engine.restore(job)
            if self.config.store_queue_on_shutdown:
                self._replayed_ids = {job.id for job in stored}
            self.replayed = len(stored)
            del stored
            log.info(
                "replayed %d job(s) from %s in %.2f s",
                self.replayed,
                store.description,
                time.monotonic() - started,
            )
            if not self.config.store_queue_on_shutdown:
                self.writer = StoreWriter(store, self.loop)
                self.writer.engine = self.engine
                self.engine.persister = self.writer
        sock = self._bind()
        self._listener = await self.loop.create_server(
            lambda: Connection(self), sock=sock, backlog=self.config.backlog
        )
        self.port = sock.getsockname()[1]
        log.info(
            "gearstore %s listening on %s:%d, queue %s%s",
            __version__,
            self.config.listen,
            self.port,
            store.description if store is not None else "builtin (not persistent)",
            " (written at clean shutdown only)" if self.config.store_queue_on_shutdown else "",
        )

    @staticmethod
    def _open_and_replay(store: QueueStore) -> list[StoredJob]:
        store.open()
        return list(store.replay())

    def _bind(self) -> socket.socket:
        host = self.config.listen
        infos = socket.getaddrinfo(
            None if host in ("", "*", "0.0.0.0") else host,
            self.config.port,
            type=socket.SOCK_STREAM,
            flags=socket.AI_PASSIVE,
        )
        family, socktype, proto, _, addr = infos[0]
        sock = socket.socket(family, socktype, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(addr)
        except OSError as exc:
            sock.close()
            raise OSError(
                exc.errno, f"cannot listen on {host}:{self.config.port}: {exc.strerror}"
            ) from None
        sock.setblocking(False)
        return sock

    def configure_socket(self, transport: asyncio.Transport) -> None:
        """Per-connection socket options (TCP_NODELAY, keepalive)."""
        sock = transport.get_extra_info("socket")
        if sock is None:
            return
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.config.keepalive:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                if hasattr(socket, "TCP_KEEPIDLE"):
                    sock.setsockopt(
                        socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, self.config.keepalive_idle
                    )
                    sock.setsockopt(
                        socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, self.config.keepalive_interval
                    )
                    sock.setsockopt(
                        socket.IPPROTO_TCP, socket.TCP_KEEPCNT, self.config.keepalive_count
                    )
        except OSError:
            pass  # not a TCP socket (tests may use socketpairs)

    # --------------------------------------------------------- write batching

    def mark_dirty(self, conn: Connection) -> None:
        """``conn`` has replies buffered: write them at the end of this loop turn."""
        self._dirty.append(conn)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        dirty = self._dirty
        self._dirty = []
        for conn in dirty:
            conn.flush()

    # ------------------------------------------------------------------ timers

    def _timer_set(self, delay: float) -> None:
        at = self.loop.time() + delay
        if at < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = at
            self._timer = self.loop.call_at(at, self._fire_timers)

    def _fire_timers(self) -> None:
        self._timer = None
        self._timer_at = float("inf")
        delay = self.engine.run_timers()
        if delay is not None:
            self._timer_set(max(delay, 0.001))

    # ---------------------------------------------------------------- shutdown

    @property
    def stopping(self) -> bool:
        """True once a stop was requested."""
        return self._stop.is_set()

    def request_stop(self, graceful: bool = True) -> None:
        """Ask the server to stop (admin ``shutdown``, signals). A second request, or a
        non-graceful one, skips waiting for running jobs."""
        if self._stop.is_set() or not graceful:
            self.graceful = False
        self._stop.set()

    async def serve(self) -> None:
        """Run until asked to stop, then shut down."""
        await self._stop.wait()
        await self.shutdown()

    async def shutdown(self) -> None:
        """Stop accepting; let running jobs finish (graceful); flush and close the store."""
        if self._listener is not None:
            self._listener.close()
        if self.graceful and self.config.shutdown_timeout > 0:
            self.engine.draining = True
            deadline = time.monotonic() + self.config.shutdown_timeout
            while self.graceful and self._running_jobs() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        # no new work from here on: what is acknowledged is in the store's queue
        for conn in list(self.connections):
            if conn.transport is not None and not conn.transport.is_closing():
                conn.transport.pause_reading()
        if self.writer is not None:
            await self.writer.flush(timeout=10)
        elif self._store is not None and self.config.store_queue_on_shutdown:
            await self.loop.run_in_executor(None, self._store_everything, self._store)
        for conn in list(self.connections):
            conn.flush()
            if conn.transport is not None:
                conn.transport.close()
        if self.writer is not None:
            await self.writer.close()
        elif self._store is not None:
            await self.loop.run_in_executor(None, self._store.close)
        if self._timer is not None:
            self._timer.cancel()
        log.info("gearstore stopped")

    def _running_jobs(self) -> int:
        return sum(f.running for f in self.engine.functions.values())

    def _store_everything(self, store: QueueStore) -> None:
        live = [
            job
            for job in self.engine.jobs.values()
            if job.background and job.state != JobState.DONE
        ]
        live_ids = {job.id for job in live}
        store.apply(
            [to_stored(job) for job in live if job.id not in self._replayed_ids],
            sorted(self._replayed_ids - live_ids),
        )
        log.info("stored %d queued background job(s) at shutdown", len(live))
