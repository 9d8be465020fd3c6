"""scoring runs, scored images, scores, file errors

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 20:05:48.476284
"""
from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('score_runs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('folders', sa.JSON(), nullable=False),
    sa.Column('classes', sa.JSON(), nullable=False),
    sa.Column('detector_ids', sa.JSON(), nullable=False),
    sa.Column('batch_size', sa.Integer(), nullable=False),
    sa.Column('total_files', sa.Integer(), nullable=True),
    sa.Column('scored_images', sa.Integer(), nullable=False),
    sa.Column('error_files', sa.Integer(), nullable=False),
    sa.Column('status', sa.Enum('queued', 'running', 'succeeded', 'failed', 'cancelled', name='job_status', native_enum=False, length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('max_attempts', sa.Integer(), nullable=False),
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
    with op.batch_alter_table('score_runs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_score_runs_status'), ['status'], unique=False)

    op.create_table('file_errors',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('folder', sa.Text(), nullable=False),
    sa.Column('rel_path', sa.Text(), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['score_runs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('run_id', 'folder', 'rel_path', name='uq_file_errors_run_path')
    )
    with op.batch_alter_table('file_errors', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_file_errors_run_id'), ['run_id'], unique=False)

    op.create_table('scored_images',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('folder', sa.Text(), nullable=False),
    sa.Column('rel_path', sa.Text(), nullable=False),
    sa.Column('size_bytes', sa.Integer(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('width', sa.Integer(), nullable=False),
    sa.Column('height', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['score_runs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('run_id', 'folder', 'rel_path', name='uq_scored_images_run_path')
    )
    with op.batch_alter_table('scored_images', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_scored_images_run_id'), ['run_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_scored_images_sha256'), ['sha256'], unique=False)

    op.create_table('scores',
    sa.Column('image_id', sa.Integer(), nullable=False),
    sa.Column('detector_id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('voc_class', sa.String(length=32), nullable=False),
    sa.Column('probability', sa.Double(), nullable=False),
    sa.Column('present', sa.Boolean(), nullable=False),
    sa.ForeignKeyConstraint(['image_id'], ['scored_images.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('image_id', 'detector_id')
    )
    with op.batch_alter_table('scores', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_scores_run_id'), ['run_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('scores', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_scores_run_id'))

    op.drop_table('scores')
    with op.batch_alter_table('scored_images', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_scored_images_sha256'))
        batch_op.drop_index(batch_op.f('ix_scored_images_run_id'))

    op.drop_table('scored_images')
    with op.batch_alter_table('file_errors', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_file_errors_run_id'))

    op.drop_table('file_errors')
    with op.batch_alter_table('score_runs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_score_runs_status'))

    op.drop_table('score_runs')
