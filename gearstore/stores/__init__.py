"""Queue-store adapters, looked up lazily by name so a missing driver only matters
to the operator who chose that backend."""

from __future__ import annotations

import importlib

from gearstore.stores.base import QueueStore, StoreConfig, StoreError

# queue-type name (gearstore's and gearmand's spellings, lower-cased) -> (module, class, extra)
_ADAPTERS: dict[str, tuple[str, str, str | None]] = {
    "sqlite": ("gearstore.stores.sqlite", "SqliteStore", None),
    "libsqlite3": ("gearstore.stores.sqlite", "SqliteStore", None),
    "file": ("gearstore.stores.journal", "JournalStore", None),
    "journal": ("gearstore.stores.journal", "JournalStore", None),
    "postgres": ("gearstore.stores.postgres", "PostgresStore", "postgres"),
    "postgresql": ("gearstore.stores.postgres", "PostgresStore", "postgres"),
    "libpq": ("gearstore.stores.postgres", "PostgresStore", "postgres"),
    "mysql": ("gearstore.stores.mysql", "MysqlStore", "mysql"),
    "memcached": ("gearstore.stores.memcached", "MemcachedStore", "memcached"),
    "libmemcached": ("gearstore.stores.memcached", "MemcachedStore", "memcached"),
}

#: queue types that keep nothing (gearmand's default)
MEMORY_KINDS = frozenset({"builtin", "memory", "none"})

KNOWN_KINDS = sorted(MEMORY_KINDS | _ADAPTERS.keys())


def canonical_kind(kind: str) -> str:
    """Map any accepted spelling to the adapter's module short name, or raise ValueError."""
    key = kind.lower()
    if key in MEMORY_KINDS:
        return "builtin"
    if key not in _ADAPTERS:
        raise ValueError(
            f"unknown queue type {kind!r}; choose one of: builtin, sqlite, file, "
            "postgres, mysql, memcached (gearmand spellings libsqlite3, Postgres, "
            "MySQL, libmemcached also work)"
        )
    return _ADAPTERS[key][0].rsplit(".", 1)[1]


def create_store(config: StoreConfig) -> QueueStore:
    """Instantiate (but do not open) the adapter named by ``config.kind``."""
    key = config.kind.lower()
    if canonical_kind(key) == "builtin":
        raise StoreError(f"-q {config.kind} keeps jobs in memory only; it has no store")
    module_name, class_name, extra = _ADAPTERS[key]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        hint = f"pip install 'gearstore[{extra}]'" if extra else "reinstall gearstore"
        raise StoreError(
            f"the {config.kind} store needs a package that is not installed "
            f"({exc.name}); run: {hint}"
        ) from exc
    cls: type[QueueStore] = getattr(module, class_name)
    return cls(config)  # type: ignore[call-arg]
