"""Fakes for driving the engine directly: a recording peer, a manual clock, a persister."""

from __future__ import annotations

from gearstore.engine.core import Engine, EngineOptions
from gearstore.engine.model import Job, Session
from gearstore.protocol.packets import PacketType as T


class FakePeer:
    """Records every packet the engine sends."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, tuple[bytes, ...]]] = []

    def send(self, ptype: int, *args: bytes) -> None:
        self.sent.append((ptype, args))

    def take(self) -> list[tuple[int, tuple[bytes, ...]]]:
        out, self.sent = self.sent, []
        return out

    def types(self) -> list[str]:
        return [T(ptype).name for ptype, _ in self.take()]


class ManualClock:
    """Wall and monotonic time that only move when told to."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now
        self.mono = 1000.0

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.mono += seconds


class HeldPersister:
    """Keeps persist requests until the test resolves them."""

    def __init__(self) -> None:
        self.pending: list[Job] = []
        self.forgotten: list[int] = []

    def persist(self, job: Job) -> None:
        self.pending.append(job)

    def forget(self, job_id: int) -> None:
        self.forgotten.append(job_id)


class Harness:
    """An engine plus helpers to connect fake peers."""

    def __init__(self, persister: HeldPersister | None = None, **options: object) -> None:
        self.clock = ManualClock()
        self.timers: list[float] = []
        self.engine = Engine(
            EngineOptions(handle_prefix=b"t", **options),  # type: ignore[arg-type]
            persister=persister,
            clock=self.clock,
            on_timer=self.timers.append,
        )

    def connect(self) -> tuple[Session, FakePeer]:
        peer = FakePeer()
        return self.engine.connect(peer), peer

    def worker(self, *functions: bytes, timeout: int = 0) -> tuple[Session, FakePeer]:
        session, peer = self.connect()
        for function in functions:
            self.engine.can_do(session, function, timeout)
        return session, peer
