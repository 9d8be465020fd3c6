"""training jobs, epoch metrics, detectors

Revision ID: 0001
Revises: 
Create Date: 2026-11-27 19:53:47.754495
"""
from alembic import op
import sqlalchemy as sa


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('train_jobs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('voc_class', sa.String(length=32), nullable=False),
    sa.Column('config', sa.JSON(), nullable=False),
    sa.Column('status', sa.Enum('queued', 'running', 'succeeded', 'failed', 'cancelled', name='job_status', native_enum=False, length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('max_attempts', sa.Integer(), nullable=False),
    sa.Column('epochs_done', sa.Integer(), nullable=False),
    sa.Column('latest_val_ap', sa.Double(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('worker_host', sa.String(length=255), nullable=True),
    sa.Column('claim_token', sa.String(length=64), nullable=True),
    sa.Column('cancel_requested', sa.Boolean(), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('train_jobs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_train_jobs_status'), ['status'], unique=False)
        batch_op.create_index(batch_op.f('ix_train_jobs_voc_class'), ['voc_class'], unique=False)

    op.create_table('detectors',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('voc_class', sa.String(length=32), nullable=False),
    sa.Column('job_id', sa.Integer(), nullable=True),
    sa.Column('checkpoint_path', sa.Text(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('threshold', sa.Double(), nullable=False),
    sa.Column('ap', sa.Double(), nullable=False),
    sa.Column('metrics', sa.JSON(), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['train_jobs.id'], ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('job_id')
    )
    with op.batch_alter_table('detectors', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_detectors_voc_class'), ['voc_class'], unique=False)
        batch_op.create_index('uq_detectors_active_class', ['voc_class'], unique=True, sqlite_where=sa.text('active'), postgresql_where=sa.text('active'))

    op.create_table('epoch_metrics',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('job_id', sa.Integer(), nullable=False),
    sa.Column('epoch', sa.Integer(), nullable=False),
    sa.Column('train_loss', sa.Double(), nullable=False),
    sa.Column('val_loss', sa.Double(), nullable=False),
    sa.Column('val_ap', sa.Double(), nullable=False),
    sa.Column('lr', sa.Double(), nullable=False),
    sa.Column('seconds', sa.Double(), nullable=False),
    sa.Column('images_per_s', sa.Double(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['train_jobs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('job_id', 'epoch', name='uq_epoch_metrics_job_epoch')
    )
    with op.batch_alter_table('epoch_metrics', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_epoch_metrics_job_id'), ['job_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('epoch_metrics', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_epoch_metrics_job_id'))

    op.drop_table('epoch_metrics')
    with op.batch_alter_table('detectors', schema=None) as batch_op:
        batch_op.drop_index('uq_detectors_active_class', sqlite_where=sa.text('active'), postgresql_where=sa.text('active'))
        batch_op.drop_index(batch_op.f('ix_detectors_voc_class'))

    op.drop_table('detectors')
    with op.batch_alter_table('train_jobs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_train_jobs_voc_class'))
        batch_op.drop_index(batch_op.f('ix_train_jobs_status'))

    op.drop_table('train_jobs')
