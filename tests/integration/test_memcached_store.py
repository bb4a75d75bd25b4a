"""The memcached store against real memcached processes: round trips, chunking,
watermark replay, several servers, outages and the eviction warning.

Figures (replay and apply timings, memory per job) are printed; run with ``-s`` to see
them. The 1M-job replay and the throughput figures are marked slow.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator

import pytest
from pymemcache.client.base import Client

from gearstore.stores.base import (
    Priority,
    SchemaTooNew,
    StoreConfig,
    StoreCorrupt,
    StoredJob,
    StoreError,
    StoreUnavailable,
)
from gearstore.stores.memcached import MemcachedStore
from tests.fixtures.memcached import MemcachedServer

Factory = Callable[[], MemcachedStore]
Servers = Callable[..., list[MemcachedServer]]
MiB = 1024 * 1024


def job(job_id: int, data: bytes = b"payload", **fields: object) -> StoredJob:
    """A small job; any StoredJob field can be overridden."""
    values: dict[str, object] = {
        "function": b"resize-image",
        "unique": b"u-%d" % job_id,
        "priority": Priority.NORMAL,
        "when": None,
        "data": data,
        "reducer": None,
    }
    values.update(fields)
    return StoredJob(job_id, **values)  # type: ignore[arg-type]


_opened: list[MemcachedStore] = []


@pytest.fixture(autouse=True)
def _close_stores() -> Iterator[None]:
    """Close what store_on() built even when a test fails, so no socket leaks into the
    next test as a ResourceWarning."""
    yield
    while _opened:
        _opened.pop().close()


def store_on(db: str, prefix: str = "t") -> MemcachedStore:
    """An unopened store on the given servers."""
    store = MemcachedStore(StoreConfig(kind="memcached", db=db, prefix=prefix))
    _opened.append(store)
    return store


def reopen(factory: Factory) -> list[StoredJob]:
    """Replay everything through a new instance, as a restarted server would."""
    store = factory()
    store.open()
    try:
        return list(store.replay())
    finally:
        store.close()


def add_all(store: MemcachedStore, ids: Iterable[int], batch: int = 1000) -> None:
    """Add jobs for ``ids`` in batches of ``batch``."""
    pending = list(ids)
    for at in range(0, len(pending), batch):
        store.apply([job(i) for i in pending[at : at + batch]], [])


def stats(server: MemcachedServer) -> dict[bytes, int]:
    """memcached's ``stats`` of a controlled server."""
    client = Client(("127.0.0.1", server.port))
    try:
        return client.stats()  # type: ignore[no-any-return]
    finally:
        client.close()


def test_odd_keys_and_binary_fields_round_trip(memcached_store_factory: Factory) -> None:
    jobs = [
        job(1, function=b"", unique=b""),
        job(2, function=b"send-mail", unique=b"a-b-c"),
        job(3, function=b"with space", unique=b"key with spaces \r\n"),
        job(4, function=bytes(range(255)), unique=bytes(range(255, 0, -1)), data=bytes(range(256))),
        job(5, priority=Priority.HIGH, when=0, reducer=b""),
        job(6, priority=Priority.LOW, when=2_000_000_000, reducer=b"sum-up"),
        job(7, data=b""),
    ]
    store = memcached_store_factory()
    store.open()
    store.apply(jobs, [])
    assert list(store.replay()) == jobs  # this instance replays too
    assert reopen(memcached_store_factory) == jobs


@pytest.mark.parametrize("size", [MiB, 16 * MiB])
def test_big_data_is_chunked_and_round_trips(memcached_store_factory: Factory, size: int) -> None:
    data = bytes(range(256)) * (size // 256)
    store = memcached_store_factory()
    store.open()
    store.apply([job(1, data=data), job(2)], [])
    assert reopen(memcached_store_factory) == [job(1, data=data), job(2)]
    store.apply([], [1])
    assert reopen(memcached_store_factory) == [job(2)]


def test_chunk_boundaries(memcached_store_factory: Factory) -> None:
    store = memcached_store_factory()
    store.open()
    budget = store._item_budget  # what fits in one item after room for key and header
    overhead = 19 + 30 + len(job(0).function) + len(job(0).unique)  # head, record header
    sizes = [budget - overhead + d for d in (-25, -1, 0, 1, 25)]
    sizes += [2 * budget - overhead + d for d in (-1, 0, 1)]
    jobs = [job(i, data=b"%d" % i * (size // len(b"%d" % i))) for i, size in enumerate(sizes, 1)]
    store.apply(jobs, [])
    assert reopen(memcached_store_factory) == jobs


def test_item_size_follows_memcached_setting(memcached_servers: Servers) -> None:
    [server] = memcached_servers(1, extra=["-I", "64k", "-o", "slab_chunk_max=16384"])
    store = store_on(server.address)
    store.open()
    data = b"z" * MiB
    store.apply([job(1, data=data)], [])
    assert stats(server)[b"curr_items"] >= 17  # 1 MiB in 64 KiB items, plus the watermark
    store.close()
    fresh = store_on(server.address)
    fresh.open()
    assert list(fresh.replay()) == [job(1, data=data)]
    fresh.apply([], [1])
    assert stats(server)[b"curr_items"] == 2  # watermark and block marker: no chunk left
    fresh.close()


def test_already_stored_id_raises_and_writes_nothing(memcached_store_factory: Factory) -> None:
    store = memcached_store_factory()
    store.open()
    store.apply([job(1), job(2)], [])
    with pytest.raises(StoreError, match="job id 2 is already stored"):
        store.apply([job(3), job(2, data=b"other")], [])  # checked against replayed ids
    with pytest.raises(StoreError, match="same job id twice"):
        store.apply([job(4), job(4)], [])
    fresh = memcached_store_factory()
    fresh.open()  # not replayed: must ask memcached
    with pytest.raises(StoreError, match="job id 1 is already stored"):
        fresh.apply([job(5), job(1, data=b"other")], [])
    fresh.close()
    assert reopen(memcached_store_factory) == [job(1), job(2)]


def test_add_race_with_another_writer_rolls_back(memcached_store_factory: Factory) -> None:
    """Two instances on one prefix: memcached's add refuses the second copy of an id,
    and the heads this batch did write are deleted again."""
    first, second = memcached_store_factory(), memcached_store_factory()
    first.open()
    assert list(first.replay()) == []
    second.open()
    second.apply([job(5, data=b"second's")], [])
    with pytest.raises(StoreError, match="already holds"):
        first.apply([job(4), job(5), job(6)], [])
    assert reopen(memcached_store_factory) == [job(5, data=b"second's")]


def test_removing_unknown_ids_is_not_an_error(memcached_store_factory: Factory) -> None:
    store = memcached_store_factory()
    store.open()
    store.apply([], [42, 43, -1, 2**64])
    with pytest.raises(StoreError, match="job ids must be"):
        store.apply([job(-5)], [])
    with pytest.raises(StoreError, match="out of range"):
        store.apply([job(2, when=2**64)], [])
    store.apply([job(1)], [1, 99])  # added and removed in one batch: gone
    store.apply([], [])
    assert reopen(memcached_store_factory) == []


def test_replay_100k_jobs_with_every_third_removed(memcached_store_factory: Factory) -> None:
    store = memcached_store_factory()
    store.open()
    add_all(store, range(1, 100_001))
    for at in range(1, 100_001, 1000):
        store.apply([], [i for i in range(at, at + 1000) if i % 3 == 0])
    started = time.perf_counter()
    replayed = reopen(memcached_store_factory)
    seconds = time.perf_counter() - started
    print(f"\nreplay of 66,667 jobs over ids 1..100,000: {seconds:.2f} s")
    assert [j.id for j in replayed] == [i for i in range(1, 100_001) if i % 3]
    assert replayed[1000] == job(replayed[1000].id)


def test_replay_skips_blocks_emptied_behind_an_old_job(
    memcached_store_factory: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    """A job queued long ago pins lo; the 200k ids used since must not all be scanned."""
    store = memcached_store_factory()
    store.open()
    store.apply([job(1, when=2_000_000_000)], [])
    for at in range(2, 200_002, 1000):  # a queue that drains as fast as it fills
        batch = list(range(at, at + 1000))
        store.apply([job(i) for i in batch], [])
        store.apply([], batch)
    assert store.watermark == (1, 200_001)
    caplog.set_level(logging.INFO, logger="gearstore.stores.memcached")
    started = time.perf_counter()
    assert reopen(memcached_store_factory) == [job(1, when=2_000_000_000)]
    seconds = time.perf_counter() - started
    [line] = [r.getMessage() for r in caplog.records if "replay" in r.getMessage()]
    blocks = int(line.split(" blocks")[0].rsplit(" ", 1)[1])
    print(f"\nreplay over ids 1..200,001 holding 1 job: {blocks} blocks read, {seconds:.3f} s")
    assert blocks <= 3  # the old job's block and the one ids are handed out in


def test_watermark_follows_removals_across_reopen(memcached_store_factory: Factory) -> None:
    store = memcached_store_factory()
    store.open()
    assert store.watermark == (1, 0)  # empty
    store.apply([job(i) for i in range(5, 11)], [])
    store.apply([], [5, 6, 8])
    store.close()

    store = memcached_store_factory()
    store.open()
    assert store.watermark == (7, 10)  # read back from memcached
    assert [j.id for j in store.replay()] == [7, 9, 10]
    store.apply([], [7, 9, 10])
    assert store.watermark == (11, 10)
    store.close()

    store = memcached_store_factory()
    store.open()
    assert list(store.replay()) == []
    store.apply([job(3)], [])  # ids restarted below lo: lo follows them down
    assert store.watermark == (3, 10)
    store.apply([job(12)], [])
    store.close()

    store = memcached_store_factory()
    store.open()
    store.apply([], [3])  # before replay this instance cannot know what lies above 3
    assert store.watermark == (3, 12)
    assert [j.id for j in store.replay()] == [12]
    store.apply([job(13)], [])
    assert store.watermark == (12, 13)
    store.close()


def test_three_servers_losing_one_loses_only_its_share(
    memcached_servers: Servers, caplog: pytest.LogCaptureFixture
) -> None:
    servers = memcached_servers(3)
    db = ",".join(s.address for s in servers)
    store = store_on(db)
    store.open()
    add_all(store, range(1, 3001), batch=300)
    home = {i: store.server_for(i) for i in range(1, 3001)}
    for server in servers:
        share = sum(1 for h in home.values() if h == server.address)
        assert 800 < share < 1200
        assert stats(server)[b"curr_items"] == share + 2  # its jobs, watermark, 1 marker
    store.close()

    servers[1].restart()  # crashed and came back empty
    survivors = [i for i in range(1, 3001) if home[i] != servers[1].address]
    store = store_on(db)
    store.open()
    assert [j.id for j in store.replay()] == survivors
    store.apply([job(3001)], survivors[:10])  # every server answers again: writes work
    store.close()

    servers[2].stop()  # and stays down
    caplog.set_level(logging.WARNING, logger="gearstore.stores.memcached")
    store = store_on(db)
    store.open()
    assert servers[2].address in caplog.text and "did not answer" in caplog.text
    reachable = {servers[0].address, servers[1].address}
    expected = [i for i in [*survivors[10:], 3001] if store.server_for(i) in reachable]
    assert [j.id for j in store.replay()] == expected
    with pytest.raises(StoreUnavailable, match=servers[2].address.replace(".", r"\.")):
        store.apply([job(3002)], [])
    store.close()


def test_outage_raises_and_next_apply_after_restart_works(memcached_servers: Servers) -> None:
    [server] = memcached_servers(1)
    store = store_on(server.address)
    store.open()
    assert list(store.replay()) == []
    store.apply([job(1)], [])
    server.kill()
    with pytest.raises(StoreUnavailable, match="is it running"):
        store.apply([job(2)], [])
    with pytest.raises(StoreUnavailable):
        store.apply([], [1])
    server.start()  # same port, empty: job 1 died with memcached
    store.apply([job(2)], [])
    store.apply([job(3)], [1])
    store.close()
    fresh = store_on(server.address)
    fresh.open()
    assert list(fresh.replay()) == [job(2), job(3)]
    fresh.close()


def test_batch_failing_on_one_server_leaves_nothing_on_the_others(
    memcached_servers: Servers,
) -> None:
    servers = memcached_servers(2)
    db = ",".join(s.address for s in servers)
    store = store_on(db)
    store.open()
    store.apply([job(1)], [])
    servers[1].kill()
    batch = [job(i) for i in range(2, 42)]
    with pytest.raises(StoreUnavailable):
        store.apply(batch, [])
    servers[1].start()
    kept = [job(1)] if store.server_for(1) == servers[0].address else []
    assert reopen(lambda: store_on(db)) == kept  # nothing of the failed batch
    store.apply(batch, [])  # the writer's retry of the same batch goes through
    assert reopen(lambda: store_on(db)) == kept + batch
    store.close()


def test_full_memcached_refuses_the_batch_and_rolls_it_back(memcached_servers: Servers) -> None:
    [server] = memcached_servers(1, memory_mb=8)  # -M: a full memcached refuses, never evicts
    store = store_on(server.address)
    store.open()
    stored: list[int] = []
    with pytest.raises(StoreUnavailable, match="-m"):
        for at in range(1, 10_000, 500):
            store.apply([job(i, data=b"x" * 1000) for i in range(at, at + 500)], [])
            stored.extend(range(at, at + 500))
    store.close()
    fresh = store_on(server.address)
    fresh.open()
    assert [j.id for j in fresh.replay()] == stored  # the refused batch left no job behind
    fresh.close()


def test_eviction_warning(memcached_servers: Servers, caplog: pytest.LogCaptureFixture) -> None:
    evicting, safe = memcached_servers(1, evictions=True)[0], memcached_servers(1)[0]
    caplog.set_level(logging.WARNING, logger="gearstore.stores.memcached")
    store = store_on(f"{evicting.address},{safe.address}")
    store.open()
    store.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert evicting.address in warnings[0] and "-M" in warnings[0]
    assert "silently evicted" in warnings[0]


def test_no_server_answering_is_unavailable(memcached_servers: Servers) -> None:
    [server] = memcached_servers(1)
    server.stop()
    store = store_on(server.address)
    with pytest.raises(StoreUnavailable, match="no memcached server answered"):
        store.open()
    with pytest.raises(StoreError, match="not open"):
        store.apply([job(1)], [])


def test_lost_chunk_and_newer_format_are_reported(memcached_store_factory: Factory) -> None:
    store = memcached_store_factory()
    store.open()
    store.apply([job(1, data=b"x" * 3 * MiB)], [])
    token, count = store._chunked[1]
    raw = store._clients[0]
    raw.delete(store._chunk_keys(1, token, count)[1])  # as an eviction would
    fresh = memcached_store_factory()
    fresh.open()
    with pytest.raises(StoreCorrupt, match=r"evicted.*-M"):
        list(fresh.replay())
    fresh.close()
    raw.set(store._prefix + b":wm", b"\x02" + bytes(16))
    with pytest.raises(SchemaTooNew, match="upgrade gearstore"):
        memcached_store_factory().open()


@pytest.mark.parametrize("prefix", ["", "a b", "tab\there", "x" * 201, "caf\u00e9", "nl\n"])
def test_unusable_prefix_is_refused(prefix: str) -> None:
    with pytest.raises(StoreError, match="prefix"):
        store_on("127.0.0.1:11211", prefix=prefix)


@pytest.mark.parametrize("db", ["", "host:port", "host:0", "a:1,a:1", None])
def test_bad_server_list_is_refused(db: str | None) -> None:
    with pytest.raises(StoreError, match="--db"):
        MemcachedStore(StoreConfig(kind="memcached", db=db))


@pytest.mark.slow
def test_replay_one_million_jobs(memcached_servers: Servers) -> None:
    [server] = memcached_servers(1, memory_mb=2048)
    store = store_on(server.address)
    store.open()
    started = time.perf_counter()
    add_all(store, range(1, 1_000_001), batch=10_000)
    added = time.perf_counter() - started
    for at in range(1, 1_000_001, 10_000):
        store.apply([], [i for i in range(at, at + 10_000) if i % 10 == 0])
    store.close()
    info = stats(server)
    client = Client(("127.0.0.1", server.port))
    malloced = client.stats("slabs")[b"total_malloced"]
    client.close()
    started, cpu = time.perf_counter(), time.process_time()
    fresh = store_on(server.address)
    fresh.open()
    count = sum(1 for _ in fresh.replay())
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    fresh.close()
    jobs = 900_000  # the watermark and 245 markers add a few KiB: negligible
    print(
        f"\n1M jobs: added in {added:.1f} s; replay of {count:,} (every 10th id removed) "
        f"in {seconds:.1f} s ({cpu:.1f} s CPU); per job (7-byte data, 12-byte function): item "
        f"{info[b'bytes'] / jobs:.0f} bytes, slab memory {malloced / jobs:.0f} bytes"
    )
    assert count == 900_000


@pytest.mark.slow
def test_apply_throughput_figures(memcached_servers: Servers) -> None:
    [server] = memcached_servers(1)
    store = store_on(server.address)
    store.open()
    next_id = 1
    for batch, total in ((1, 3000), (100, 30_000), (1000, 100_000)):
        started = time.perf_counter()
        for _ in range(total // batch):
            store.apply([job(i) for i in range(next_id, next_id + batch)], [])
            next_id += batch
        rate = total / (time.perf_counter() - started)
        print(f"\napply, batches of {batch}: {rate:,.0f} jobs/s")
        assert rate > 100
    store.close()
