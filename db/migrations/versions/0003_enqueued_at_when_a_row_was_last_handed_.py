"""enqueued_at: when a row was last handed to the broker

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 20:10:56.830526
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('score_runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('enqueued_at', sa.DateTime(timezone=True), nullable=True))

    with op.batch_alter_table('train_jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('enqueued_at', sa.DateTime(timezone=True), nullable=True))



def downgrade() -> None:
    with op.batch_alter_table('train_jobs', schema=None) as batch_op:
        batch_op.drop_column('enqueued_at')

    with op.batch_alter_table('score_runs', schema=None) as batch_op:
        batch_op.drop_column('enqueued_at')

