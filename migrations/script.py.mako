"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
Create Date: ${create_date}

The queue table's name is configurable: read it from context.config.attributes["table"]
and never import gearstore's current model here (migrations are frozen history).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op
${imports if imports else ""}
revision: str = ${repr(up_revision)}
down_revision: str | None = ${repr(down_revision)}
branch_labels: str | None = ${repr(branch_labels)}
depends_on: str | None = ${repr(depends_on)}


def upgrade() -> None:
    """Apply this revision."""
    table = context.config.attributes["table"]
    ${upgrades if upgrades else "pass"}


def downgrade() -> None:
    """Revert this revision."""
    table = context.config.attributes["table"]
    ${downgrades if downgrades else "pass"}
