"""The ``backend`` fixture: command-line arguments that point a gearstore process at a
real store, one per test, plus the handle to take that store's server down.

Use it indirectly: ``@pytest.mark.parametrize("backend", [...], indirect=True)``. A
backend whose server or driver is missing skips (and so fails under CI=true).
"""

from __future__ import annotations

import importlib.util
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.acceptance.gearstore_process import GearstoreProcess
from tests.dbservers import DbServer, drop_tables, unique_table_name

ALL_BACKENDS = ["sqlite", "file", "postgres", "mysql", "memcached"]
DRIVERS = {"postgres": "psycopg", "mysql": "pymysql", "memcached": "pymemcache"}


@dataclass
class Backend:
    """Where a gearstore process keeps its queue in one test."""

    name: str
    args: list[str]
    #: the database/memcached server behind it, for outage tests (None for files)
    server: Any = None
    #: the file or directory given to --db (sqlite, file)
    path: Path | None = None
    notes: list[str] = field(default_factory=list)


@pytest.fixture
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """A private store of the kind named by the parameter, on a shared server."""
    yield from _backend(request, tmp_path, controllable=False)


@pytest.fixture
def outage_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Like ``backend``, on a server this test may stop and start (``.server``)."""
    yield from _backend(request, tmp_path, controllable=True)


def _backend(
    request: pytest.FixtureRequest, tmp_path: Path, controllable: bool
) -> Iterator[Backend]:
    name: str = request.param
    module = DRIVERS.get(name)
    if module is not None and importlib.util.find_spec(module) is None:
        pytest.skip(
            f"the {name} driver ({module}) is not installed: pip install 'gearstore[{name}]'"
        )
    if name == "sqlite":
        path = tmp_path / "queue.db"
        yield Backend(name, ["-q", "sqlite", "--db", str(path)], path=path)
    elif name == "file":
        path = tmp_path / "journal"
        yield Backend(name, ["-q", "file", "--db", str(path)], path=path)
    elif name in ("postgres", "mysql"):
        server: DbServer = request.getfixturevalue(f"{name}_server")
        if controllable:
            server.require_control()
        if server.controllable and not server.running:
            server.start()  # an earlier test left it down
        table = unique_table_name(request.node.name)
        yield Backend(name, ["-q", name, "--db", server.url, "--table", table], server=server)
        if server.controllable and not server.running:
            server.start()
        drop_tables(server.url, table)
    elif name == "memcached":
        if controllable:
            # a memcached of its own, which the test may stop and start on the same port
            (mc,) = request.getfixturevalue("memcached_servers")(1)
            address = mc.address
        else:
            mc, address = None, request.getfixturevalue("memcached_address")
        prefix = f"gsacc-{uuid.uuid4().hex[:10]}"
        yield Backend(name, ["-q", "memcached", "--db", address, "--prefix", prefix], server=mc)
    else:
        raise AssertionError(f"unknown backend {name!r}")


@pytest.fixture
def gearstore(tmp_path: Path) -> Iterator[Callable[..., GearstoreProcess]]:
    """Start ``gearstore`` children: ``gearstore(*args, port=None, start=True)``.

    Every child is killed after the test; its log is ``tmp_path/gearstore-N.log``.
    """
    started: list[GearstoreProcess] = []

    def make(*args: str, port: int | None = None, start: bool = True) -> GearstoreProcess:
        proc = GearstoreProcess(args, port=port, log=tmp_path / f"gearstore-{len(started)}.log")
        started.append(proc)
        return proc.start() if start else proc

    yield make
    for proc in started:
        proc.kill()
