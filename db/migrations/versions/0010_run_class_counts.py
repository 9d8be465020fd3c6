"""a finished scoring run keeps how many of its pictures have each class; a folder's pictures found by index

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30 10:00:00

``score_runs.class_counts``: class -> pictures where it is present, written once when the run
ends (one GROUP BY over its scores), so a run's page answers at once at a million pictures.
Runs that ended before this revision have none: they are counted when asked.

On PostgreSQL ``ix_scored_images_run_rel_path`` is rebuilt with ``text_pattern_ops``, so the
gallery's folder filter (``rel_path LIKE 'sub/%'``) is an index range, not a scan of the run
(equality, for ``results --image``, uses it as before). The rebuild reads the table once: about
a second per million pictures.

Older code ignores the column: a 0009 host may keep running on this schema.
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None
older_code_ok = True  # one nullable column that older code never reads or writes


def upgrade() -> None:
    with op.batch_alter_table("score_runs") as batch:
        batch.add_column(sa.Column("class_counts", sa.JSON(), nullable=True))
    if op.get_bind().dialect.name == "postgresql":
        op.drop_index("ix_scored_images_run_rel_path", table_name="scored_images")
        op.create_index("ix_scored_images_run_rel_path", "scored_images", ["run_id", "rel_path"], postgresql_ops={"rel_path": "text_pattern_ops"})


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_index("ix_scored_images_run_rel_path", table_name="scored_images")
        op.create_index("ix_scored_images_run_rel_path", "scored_images", ["run_id", "rel_path"])
    with op.batch_alter_table("score_runs") as batch:
        batch.drop_column("class_counts")
