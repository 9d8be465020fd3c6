"""training jobs and scoring runs get a name, tags and a note, to be found again

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-30 10:30:00

``name`` (up to 100 characters), ``tags`` (a JSON object of key -> value, as ``--tag KEY=VALUE``
gives them) and ``note`` on ``train_jobs`` and ``score_runs``: shown by ``status``, ``runs`` and
``detectors`` and filtered on with ``--tag``. All nullable: older code never reads or writes them.
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None
older_code_ok = True  # nullable columns older code never reads or writes

TABLES = ("train_jobs", "score_runs")


def upgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("name", sa.String(100), nullable=True))
            batch.add_column(sa.Column("tags", sa.JSON(), nullable=True))
            batch.add_column(sa.Column("note", sa.Text(), nullable=True))


def downgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.drop_column("note")
            batch.drop_column("tags")
            batch.drop_column("name")
