"""the schema says which code may run on it, and the workers say who they are

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30 08:00:00

``schema_compat`` holds one row: the oldest schema revision whose code can still run against this
database (written by ``vocfleet db upgrade``), so a host with older code knows whether it may run
or must be upgraded first. ``workers`` holds one row per fleet worker: its host, queues, vocfleet
version, device and heartbeat (``vocfleet workers`` adds what each holds, from the rows it claimed).

Older code ignores both tables: a 0008 host may keep running on this schema.
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None
older_code_ok = True  # only new tables: code of 0008 reads and writes what it always did


def upgrade() -> None:
    op.create_table("schema_compat", sa.Column("oldest_code", sa.String(32), nullable=False))
    op.create_table(
        "workers",
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("host", sa.String(200), nullable=False),
        sa.Column("queues", sa.String(100), nullable=False),
        sa.Column("version", sa.String(50), nullable=False),
        sa.Column("device", sa.String(100), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("stopped_at", sa.DateTime(timezone=True), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("workers")
    op.drop_table("schema_compat")
