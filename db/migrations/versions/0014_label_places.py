"""where a person saw a labelled picture that no scoring run has seen (a detector's evaluation picture)

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-02 23:30:00

``picture_labels.folder`` and ``picture_labels.rel_path``: the file a person looked at when the
label was given, for a picture found only through a detector's evaluation pictures (its VOC root's
``JPEGImages``). A label is still found by the picture's sha256; the place only tells `vocfleet
labels export` where to read a picture no run saw. Empty for labels given on a scored picture.

Nullable columns: 0013 code reads and writes what it always did.
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None
older_code_ok = True  # nullable columns that older code never reads or writes


def upgrade() -> None:
    with op.batch_alter_table("picture_labels") as batch:
        batch.add_column(sa.Column("folder", sa.Text(), nullable=True))
        batch.add_column(sa.Column("rel_path", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("picture_labels") as batch:
        batch.drop_column("rel_path")
        batch.drop_column("folder")
