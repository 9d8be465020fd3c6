"""a training job may wait for a shared start: the job it begins from, and the start's network file

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02 14:30:00

``train_jobs.start_job_id``: the start job (one network on all 20 labels) a class job begins from;
the job is not claimed before its start has succeeded. ``start_file`` and ``start_sha256``: where a
start job's ``start.pt`` is in the artifact store, and its sha256, written when the start ends.

Older code would claim a job that waits for its start and train it from scratch instead, so a
0011 host must not run on this schema (``older_code_ok`` is False: ``db check`` says so).
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None
older_code_ok = False  # older workers would ignore start_job_id and train a waiting job from scratch


def upgrade() -> None:
    with op.batch_alter_table("train_jobs") as batch:
        batch.add_column(sa.Column("start_job_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("start_file", sa.Text(), nullable=True))
        batch.add_column(sa.Column("start_sha256", sa.String(64), nullable=True))
        batch.create_foreign_key("fk_train_jobs_start_job_id", "train_jobs", ["start_job_id"], ["id"], ondelete="SET NULL")
        batch.create_index("ix_train_jobs_start_job_id", ["start_job_id"])


def downgrade() -> None:
    with op.batch_alter_table("train_jobs") as batch:
        batch.drop_index("ix_train_jobs_start_job_id")
        batch.drop_constraint("fk_train_jobs_start_job_id", type_="foreignkey")
        batch.drop_column("start_sha256")
        batch.drop_column("start_file")
        batch.drop_column("start_job_id")
