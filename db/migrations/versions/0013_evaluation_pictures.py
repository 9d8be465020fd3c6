"""each detector's evaluation pictures: their label and its probability, to show where it is right and wrong

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-02 21:00:00

``evaluation_pictures``: one row per picture a detector was judged on (its VOC id, whether the
class is in it, the detector's probability), written with the detector when its job ends. Its
false positives, false negatives and the pictures near its threshold are read from here.

A new table only: 0012 code reads and writes what it always did (its detectors have none).
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None
older_code_ok = True  # a new table that older code never reads or writes


def upgrade() -> None:
    op.create_table(
        "evaluation_pictures",
        sa.Column("detector_id", sa.Integer(), sa.ForeignKey("detectors.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("picture", sa.String(64), primary_key=True),
        sa.Column("label", sa.Boolean(), nullable=False),
        sa.Column("probability", sa.Float(), nullable=False),
    )
    op.create_index("ix_evaluation_pictures_ranked", "evaluation_pictures", ["detector_id", "label", "probability"])


def downgrade() -> None:
    op.drop_index("ix_evaluation_pictures_ranked", table_name="evaluation_pictures")
    op.drop_table("evaluation_pictures")
