"""alembic environment for gearstore's SQL queue tables.

gearstore runs alembic programmatically (gearstore.migrate): the connection, the queue
table's name and its version table arrive in ``config.attributes``. There is no
alembic.ini and no offline (``--sql``) mode: run ``gearstore db upgrade`` instead.
"""

from __future__ import annotations

from alembic import context

config = context.config
connection = config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "gearstore's migrations need a live connection passed by gearstore.migrate; "
        "run `gearstore db upgrade` rather than the alembic command"
    )

context.configure(
    connection=connection,
    target_metadata=None,
    version_table=config.attributes["version_table"],
)

with context.begin_transaction():
    context.run_migrations()
