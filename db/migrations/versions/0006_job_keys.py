"""train_jobs.key: artifact folders unique across databases

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28 10:20:00

Jobs from before keep their folder name (their id), so a queued or interrupted one still resumes;
every new job gets a random key.
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("train_jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("key", sa.String(length=32), nullable=True))
    op.execute("UPDATE train_jobs SET key = CAST(id AS VARCHAR(32))")
    with op.batch_alter_table("train_jobs", schema=None) as batch_op:
        batch_op.alter_column("key", existing_type=sa.String(length=32), nullable=False)
        batch_op.create_unique_constraint("uq_train_jobs_key", ["key"])


def downgrade() -> None:
    with op.batch_alter_table("train_jobs", schema=None) as batch_op:
        batch_op.drop_constraint("uq_train_jobs_key", type_="unique")
        batch_op.drop_column("key")
