"""train_jobs.promote: a new detector replaces the active one only if it is at least as good

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-28 10:40:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("train_jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("promote", sa.String(length=16), nullable=False, server_default="if-better"))


def downgrade() -> None:
    with op.batch_alter_table("train_jobs", schema=None) as batch_op:
        batch_op.drop_column("promote")
