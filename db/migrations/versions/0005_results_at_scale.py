"""Results at scale: query indexes, JSONB on PostgreSQL, views for ad-hoc SQL

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28 10:00:00

Views (documented in the README):
- active_detectors: the active detector of each class, its metrics as real columns.
- image_labels: one row per (run, image, class): probability, the detector's threshold, present.
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

JSON_COLUMNS = {
    "train_jobs": ["config"],
    "detectors": ["metrics"],
    "score_runs": ["folders", "classes", "detector_ids"],
    "score_shards": ["files"],
}
METRICS = [("ap11", "float"), ("auc", "float"), ("accuracy", "float"), ("baseline_accuracy", "float"), ("f1", "float"), ("positives", "int"), ("images", "int")]


def _metric(dialect: str, key: str, kind: str) -> str:
    if dialect == "postgresql":
        return f"(metrics->>'{key}')::{'double precision' if kind == 'float' else 'integer'}"
    return f"json_extract(metrics, '$.{key}')"


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    with op.batch_alter_table("scores", schema=None) as batch_op:
        batch_op.drop_index("ix_scores_run_id")
        batch_op.create_index("ix_scores_run_class_present_prob", ["run_id", "voc_class", "present", "probability"], unique=False)
    with op.batch_alter_table("scored_images", schema=None) as batch_op:
        batch_op.create_index("ix_scored_images_run_rel_path", ["run_id", "rel_path"], unique=False)
        batch_op.create_index("ix_scored_images_run_order", ["run_id", "id"], unique=False)
    if dialect == "postgresql":
        for table, columns in JSON_COLUMNS.items():
            for column in columns:
                op.alter_column(table, column, type_=postgresql.JSONB(), postgresql_using=f"{column}::jsonb")
    metrics = ",\n            ".join(f"{_metric(dialect, key, kind)} AS {'always_absent' if key == 'baseline_accuracy' else 'eval_images' if key == 'images' else key}" for key, kind in METRICS)
    split = "metrics->>'split'" if dialect == "postgresql" else "json_extract(metrics, '$.split')"
    op.execute(
        f"""CREATE VIEW active_detectors AS
        SELECT id, voc_class AS "class", job_id, ap,
            {metrics},
            {split} AS split, threshold, checkpoint_path, sha256, created_at
        FROM detectors WHERE active"""
    )
    op.execute(
        """CREATE VIEW image_labels AS
        SELECT s.run_id, i.folder, i.rel_path AS image, i.sha256, s.voc_class AS "class", s.probability, d.threshold, s.present
        FROM scores s JOIN scored_images i ON i.id = s.image_id JOIN detectors d ON d.id = s.detector_id"""
    )


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    op.execute("DROP VIEW image_labels")
    op.execute("DROP VIEW active_detectors")
    if dialect == "postgresql":
        for table, columns in JSON_COLUMNS.items():
            for column in columns:
                op.alter_column(table, column, type_=sa.JSON(), postgresql_using=f"{column}::json")
    with op.batch_alter_table("scored_images", schema=None) as batch_op:
        batch_op.drop_index("ix_scored_images_run_order")
        batch_op.drop_index("ix_scored_images_run_rel_path")
    with op.batch_alter_table("scores", schema=None) as batch_op:
        batch_op.drop_index("ix_scores_run_class_present_prob")
        batch_op.create_index("ix_scores_run_id", ["run_id"], unique=False)
