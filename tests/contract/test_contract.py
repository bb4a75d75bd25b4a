"""The store contract: one suite, run against every adapter with its real backend.

Each backend's fixture module (tests/fixtures/<name>.py) provides
``<name>_store_factory``: a zero-argument callable building a new, unopened store that
points at the same backend for the whole test, so a test can close one instance and
replay through another. A backend whose fixtures are missing skips (and, under CI=true,
the conftest turns that skip into a failure).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Iterator

import pytest

from gearstore.stores.base import Priority, QueueStore, StoredJob, StoreError

BACKENDS = ["sqlite", "file", "postgres", "mysql", "memcached"]

MiB = 1024 * 1024

Factory = Callable[[], QueueStore]


@pytest.fixture(params=BACKENDS)
def store_factory(request: pytest.FixtureRequest) -> Factory:
    """The backend's store factory, or a skip if its fixtures do not exist yet."""
    name = request.param
    try:
        factory: Factory = request.getfixturevalue(f"{name}_store_factory")
    except pytest.FixtureLookupError:
        pytest.skip(f"{name} store fixtures not available yet ({name}_store_factory)")
    return factory


@pytest.fixture
def store(store_factory: Factory) -> Iterator[QueueStore]:
    """An opened store, closed after the test."""
    opened = store_factory()
    opened.open()
    yield opened
    opened.close()


def job(
    job_id: int,
    *,
    function: bytes = b"reverse",
    unique: bytes = b"",
    priority: Priority = Priority.NORMAL,
    when: int | None = None,
    data: bytes = b"payload",
    reducer: bytes | None = None,
) -> StoredJob:
    """A StoredJob with ordinary defaults."""
    return StoredJob(job_id, function, unique, priority, when, data, reducer)


def reopened_replay(factory: Factory) -> list[StoredJob]:
    """Replay through a brand-new instance, closing it afterwards."""
    fresh = factory()
    fresh.open()
    try:
        return list(fresh.replay())
    finally:
        fresh.close()


def assert_jobs(actual: Iterable[StoredJob], expected: Iterable[StoredJob]) -> None:
    """Same jobs, same order, and exactly the declared types (bytes, Priority, int)."""
    got, want = list(actual), list(expected)
    assert [j.id for j in got] == [j.id for j in want]
    for g, w in zip(got, want, strict=True):
        assert type(g.function) is bytes and type(g.unique) is bytes
        assert type(g.data) is bytes
        assert type(g.priority) is Priority
        assert g.when is None or type(g.when) is int
        assert g.reducer is None or type(g.reducer) is bytes
        assert g == w


def test_new_store_replays_nothing(store: QueueStore) -> None:
    assert list(store.replay()) == []


ODD_STRINGS = [
    b"",
    b"\x00",
    b"a\x00b\xff",
    b"\xff\xfe\x80",
    b"-",
    b"job-1-2",
    b" ",
    b"with space ",
    b"\t\r\n",
    b"'; DROP TABLE x; --",
    "ünïcødé ☃ 漢字".encode(),
    bytes(range(256)),
    b"u" * 255,
    b"v" * 1000,
]


def test_odd_function_names_and_unique_keys_round_trip(store_factory: Factory) -> None:
    jobs = []
    next_id = 1
    for text in ODD_STRINGS:
        jobs.append(job(next_id, function=text, unique=b"plain"))
        jobs.append(job(next_id + 1, function=b"f", unique=text))
        jobs.append(job(next_id + 2, function=text, unique=text, reducer=text, data=text))
        next_id += 3
    store = store_factory()
    store.open()
    store.apply(jobs, [])
    assert_jobs(store.replay(), jobs)
    store.close()
    assert_jobs(reopened_replay(store_factory), jobs)


def test_jobs_sharing_function_and_unique_are_all_kept(store: QueueStore) -> None:
    # gearmand keys by (unique, function) and loses all but one of these
    jobs = [job(i, function=b"same", unique=b"", data=b"%d" % i) for i in range(1, 6)]
    jobs += [job(i, function=b"same", unique=b"u", data=b"%d" % i) for i in range(6, 9)]
    store.apply(jobs[:4], [])
    store.apply(jobs[4:], [])
    assert_jobs(store.replay(), jobs)


def _check_large(store_factory: Factory, size: int) -> None:
    # every byte value, and not one repeating pattern an adapter could get right by luck
    data = bytes(range(256)) + os.urandom(size - 256)
    digest = hashlib.sha256(data).hexdigest()
    store = store_factory()
    store.open()
    store.apply([job(1, data=b"small"), job(2, data=data), job(3, data=b"")], [])
    store.close()
    replayed = reopened_replay(store_factory)
    assert [j.id for j in replayed] == [1, 2, 3]
    big = replayed[1]
    assert type(big.data) is bytes
    assert len(big.data) == size  # compare digests: a 16 MiB diff would drown the report
    assert hashlib.sha256(big.data).hexdigest() == digest
    assert replayed[0].data == b"small" and replayed[2].data == b""


@pytest.mark.parametrize("size", [1 * MiB, 16 * MiB], ids=["1MiB", "16MiB"])
def test_large_data_round_trips(store_factory: Factory, size: int) -> None:
    _check_large(store_factory, size)


@pytest.mark.slow
def test_64_mib_data_round_trips(store_factory: Factory) -> None:
    _check_large(store_factory, 64 * MiB)


def test_priority_when_and_reducer_round_trip(store_factory: Factory) -> None:
    jobs = [
        job(1, priority=Priority.HIGH),
        job(2, priority=Priority.NORMAL, when=0),
        job(3, priority=Priority.LOW, when=2**40),
        job(4, priority=Priority.HIGH, when=2**62, reducer=b""),
        job(5, priority=Priority.LOW, when=None, reducer=b"sum"),
        job(6, priority=Priority.NORMAL, when=1_700_000_000, reducer=b"\x00r\xff"),
    ]
    store = store_factory()
    store.open()
    store.apply(jobs, [])
    store.close()
    replayed = reopened_replay(store_factory)
    assert_jobs(replayed, jobs)
    assert [j.priority for j in replayed] == [0, 1, 2, 0, 2, 1]
    assert [j.when for j in replayed] == [None, 0, 2**40, 2**62, None, 1_700_000_000]
    assert [j.reducer for j in replayed] == [None, None, None, b"", b"sum", b"\x00r\xff"]


def test_removals_including_unknown_ids(store_factory: Factory) -> None:
    jobs = [job(i, data=b"d%d" % i) for i in range(1, 11)]
    store = store_factory()
    store.open()
    store.apply(jobs, [])
    store.apply([], [2, 4, 999, 2**40])  # 999 and 2**40 were never stored
    store.apply([], [4, 6])  # 4 is already gone
    store.apply([job(11)], [11_000, 1])
    expected = [j for j in jobs if j.id not in (1, 2, 4, 6)] + [job(11)]
    assert_jobs(store.replay(), expected)
    store.close()
    assert_jobs(reopened_replay(store_factory), expected)


def test_removal_of_a_job_added_in_an_earlier_batch(store: QueueStore) -> None:
    store.apply([job(1), job(2)], [])
    store.apply([job(3)], [1])
    store.apply([], [3])
    assert_jobs(store.replay(), [job(2)])


def test_replay_is_in_id_order_whatever_the_add_order(store_factory: Factory) -> None:
    store = store_factory()
    store.open()
    # ids come from the server's counter: increasing, with gaps where jobs finished or
    # were foreground, but a batch may hold them in any order
    store.apply([job(50), job(7)], [])
    store.apply([job(3), job(20_000), job(8)], [])
    store.apply([job(1)], [])
    store.apply([job(20_001), job(20)], [])
    ids = [1, 3, 7, 8, 20, 50, 20_000, 20_001]
    assert [j.id for j in store.replay()] == ids
    store.close()
    assert [j.id for j in reopened_replay(store_factory)] == ids


def test_replay_after_close_through_a_new_instance(store_factory: Factory) -> None:
    first = store_factory()
    first.open()
    first.apply([job(1, data=b"one"), job(2, data=b"two")], [])
    first.close()
    second = store_factory()
    second.open()
    assert_jobs(second.replay(), [job(1, data=b"one"), job(2, data=b"two")])
    second.apply([job(3, data=b"three")], [1])
    second.close()
    assert_jobs(reopened_replay(store_factory), [job(2, data=b"two"), job(3, data=b"three")])


def test_a_failed_batch_applies_nothing(store_factory: Factory) -> None:
    store = store_factory()
    store.open()
    before = [job(1, data=b"original"), job(2), job(3)]
    store.apply(before, [])
    # job 1 is already stored: the whole batch must fail, adds and removals alike
    with pytest.raises(StoreError):
        store.apply([job(10), job(1, data=b"duplicate"), job(11)], [2])
    assert_jobs(store.replay(), before)
    # and the store keeps working afterwards
    store.apply([job(12)], [3])
    store.close()
    assert_jobs(reopened_replay(store_factory), [before[0], before[1], job(12)])


def test_an_empty_batch_changes_nothing(store: QueueStore) -> None:
    store.apply([], [])
    assert list(store.replay()) == []
    store.apply([job(1)], [])
    store.apply([], [])
    assert_jobs(store.replay(), [job(1)])


def test_ten_thousand_jobs_in_one_batch(store_factory: Factory) -> None:
    jobs = [
        job(i, unique=b"u%d" % i, priority=Priority(i % 3), data=b"%d" % i * 10)
        for i in range(1, 10_001)
    ]
    store = store_factory()
    store.open()
    store.apply(jobs, [])
    store.apply([], list(range(2, 10_001, 2)))
    store.close()
    assert_jobs(reopened_replay(store_factory), jobs[::2])


def test_many_small_batches(store_factory: Factory) -> None:
    store = store_factory()
    store.open()
    live: dict[int, StoredJob] = {}
    for n in range(1, 301):
        added = job(n, unique=b"%d" % n, data=b"x" * (n % 17))
        # remove the job added three batches ago, if it is still there
        gone = [n - 3] if n % 2 == 0 and n > 3 else []
        store.apply([added], gone)
        live[n] = added
        for job_id in gone:
            live.pop(job_id, None)
    store.close()
    assert_jobs(reopened_replay(store_factory), [live[k] for k in sorted(live)])


def test_close_twice_is_harmless(store_factory: Factory) -> None:
    store = store_factory()
    store.open()
    store.apply([job(1)], [])
    store.close()
    store.close()
    assert_jobs(reopened_replay(store_factory), [job(1)])
