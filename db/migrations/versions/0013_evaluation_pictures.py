"""each detector's evaluation pictures (where it is right and wrong), and what incremental scoring needs

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-02 21:00:00

``evaluation_pictures``: one row per picture a detector was judged on (its VOC id, whether the
class is in it, the detector's probability), written with the detector when its job ends. Its
false positives, false negatives and the pictures near its threshold are read from here.

``scored_images.mtime_ns``: the file's modification time when it was scored, so a later run of the
same folder knows an unchanged file by its size and time without reading it. ``score_runs.reused``:
pictures a run took from earlier runs instead of decoding them; ``score_runs.fresh``: a run asked
to score everything again (``score --fresh``). ``picture_labels``: a person's word that a class is
or is not in a picture, by its sha256 (so it follows the file), appended to, never overwritten.

A new table and columns with defaults: 0012 code reads and writes what it always did (its
detectors keep no pictures, its runs reuse nothing).
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None
older_code_ok = True  # a new table and defaulted columns that older code never reads or writes


def upgrade() -> None:
    op.create_table(
        "evaluation_pictures",
        sa.Column("detector_id", sa.Integer(), sa.ForeignKey("detectors.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("picture", sa.String(64), primary_key=True),
        sa.Column("label", sa.Boolean(), nullable=False),
        sa.Column("probability", sa.Double(), nullable=False),
    )
    op.create_index("ix_evaluation_pictures_ranked", "evaluation_pictures", ["detector_id", "label", "probability"])
    with op.batch_alter_table("scored_images") as batch:
        batch.add_column(sa.Column("mtime_ns", sa.BigInteger(), nullable=True))
    op.create_table(
        "picture_labels",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("voc_class", sa.String(32), nullable=False),
        sa.Column("present", sa.Boolean(), nullable=False),
        sa.Column("who", sa.String(200), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_picture_labels_sha256_class", "picture_labels", ["sha256", "voc_class", "id"])
    with op.batch_alter_table("score_runs") as batch:
        batch.add_column(sa.Column("reused", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("fresh", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    op.drop_index("ix_picture_labels_sha256_class", table_name="picture_labels")
    op.drop_table("picture_labels")
    with op.batch_alter_table("score_runs") as batch:
        batch.drop_column("fresh")
        batch.drop_column("reused")
    with op.batch_alter_table("scored_images") as batch:
        batch.drop_column("mtime_ns")
    op.drop_index("ix_evaluation_pictures_ranked", table_name="evaluation_pictures")
    op.drop_table("evaluation_pictures")
