"""Create the queue table: one row per stored background job, keyed by job id.

Revision ID: 0001
Revises:
Create Date: 2026-11-23

The key is the server-assigned id and nothing else: gearmand's (unique, function) key
loses background jobs that share an empty unique key.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects import mysql, postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def _binary() -> sa.types.TypeEngine[bytes]:
    return (
        sa.LargeBinary()
        .with_variant(postgresql.BYTEA(), "postgresql")
        .with_variant(mysql.BLOB(), "mysql", "mariadb")
    )


def _big_binary() -> sa.types.TypeEngine[bytes]:
    return (
        sa.LargeBinary()
        .with_variant(postgresql.BYTEA(), "postgresql")
        .with_variant(mysql.LONGBLOB(), "mysql", "mariadb")
    )


def upgrade() -> None:
    """Create the queue table named by the caller."""
    table = context.config.attributes["table"]
    op.create_table(
        table,
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=False,
            nullable=False,
        ),
        sa.Column("function_name", _binary(), nullable=False),
        sa.Column("unique_key", _binary(), nullable=False),
        sa.Column("priority", sa.SmallInteger(), nullable=False),
        sa.Column("when_epoch", sa.BigInteger(), nullable=True),
        sa.Column("data", _big_binary(), nullable=False),
        sa.Column("reducer", _binary(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        mysql_engine="InnoDB",
    )


def downgrade() -> None:
    """Drop the queue table (and every job in it)."""
    op.drop_table(context.config.attributes["table"])
