"""``gearstore db upgrade | current | import-gearmand``: store maintenance commands.

They take the same store flags as the server (``-q``, ``--db``, ``--table``, gearmand's
spellings, ``GEARSTORE_*`` variables, ``--config``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from gearstore.config import ConfigError, parse_args
from gearstore.stores import canonical_kind, create_store
from gearstore.stores.base import StoreError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gearstore db",
        description="Store maintenance. Store flags are the server's: -q TYPE --db LOCATION …",
    )
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("upgrade", help="create or upgrade the SQL schema to this version's head")
    sub.add_parser("current", help="print the schema revision of the store")
    imp = sub.add_parser(
        "import-gearmand", help="add the jobs of a gearmand queue table to this store"
    )
    imp.add_argument(
        "--source",
        required=True,
        help="gearmand's database as a URL: sqlite:///path, postgresql://…, mysql://…",
    )
    imp.add_argument(
        "--source-table",
        default=None,
        help="gearmand's table (gearman_queue for SQLite and MySQL, queue for PostgreSQL)",
    )
    return parser


def main(argv: Sequence[str]) -> int:
    """Run one db subcommand; returns the exit status."""
    namespace, rest = _parser().parse_known_args(list(argv))
    try:
        config, _ = parse_args(rest)
    except ConfigError as exc:
        print(f"gearstore db: error: {exc}", file=sys.stderr)
        return 2
    kind = canonical_kind(config.queue_type)
    try:
        if namespace.action in ("upgrade", "current"):
            if kind not in ("sqlite", "postgres", "mysql"):
                print(
                    f"gearstore db: error: -q {config.queue_type} has no schema; "
                    "db upgrade/current apply to sqlite, postgres and mysql",
                    file=sys.stderr,
                )
                return 2
            from gearstore import migrate

            if namespace.action == "upgrade":
                print(f"schema at revision {migrate.db_upgrade(config.store_config())}")
            else:
                print(migrate.db_current(config.store_config()) or "none (empty database)")
            return 0
        return _import(config.store_config(), namespace.source, namespace.source_table)
    except StoreError as exc:
        print(f"gearstore db: error: {exc}", file=sys.stderr)
        return 1


def _import(store_config: object, source: str, source_table: str | None) -> int:
    from gearstore.importer import import_gearmand
    from gearstore.stores.base import StoreConfig

    assert isinstance(store_config, StoreConfig)
    if canonical_kind(store_config.kind) == "builtin":
        print("gearstore db: error: import needs a persistent store (-q …)", file=sys.stderr)
        return 2
    store = create_store(store_config)
    store.open()
    try:
        first_id = max((job.id for job in store.replay()), default=0) + 1
        count = import_gearmand(source, source_table, store, first_id)
    finally:
        store.close()
    print(f"imported {count} job(s) from {source}")
    return 0
