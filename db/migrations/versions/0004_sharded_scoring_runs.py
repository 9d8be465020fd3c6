"""Sharded scoring runs: score_shards, and score_runs.scanned / shard_size

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28 09:10:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "score_shards",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("files", sa.JSON(), nullable=False),
        sa.Column("total_files", sa.Integer(), nullable=False),
        sa.Column("scored_images", sa.Integer(), nullable=False),
        sa.Column("error_files", sa.Integer(), nullable=False),
        sa.Column("status", sa.Enum("queued", "running", "succeeded", "failed", "cancelled", name="job_status", native_enum=False, length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("enqueued_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("worker_host", sa.String(length=255), nullable=True),
        sa.Column("claim_token", sa.String(length=64), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["run_id"], ["score_runs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("run_id", "number", name="uq_score_shards_run_number"),
    )
    with op.batch_alter_table("score_shards", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_score_shards_run_id"), ["run_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_score_shards_status"), ["status"], unique=False)

    with op.batch_alter_table("score_runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("shard_size", sa.Integer(), nullable=False, server_default="2000"))
        # Runs from before shards: finished ones are complete; an unfinished one is scanned again
        # on resume, and the files it already recorded are skipped.
        batch_op.add_column(sa.Column("scanned", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("score_runs", schema=None) as batch_op:
        batch_op.drop_column("scanned")
        batch_op.drop_column("shard_size")
    with op.batch_alter_table("score_shards", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_score_shards_status"))
        batch_op.drop_index(batch_op.f("ix_score_shards_run_id"))
    op.drop_table("score_shards")
