"""detectors name their files relative to the artifact store: a moved data folder keeps working

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30 03:30:00

A detector's checkpoint and plots were recorded as absolute paths (or s3:// URLs). After the data
folder moved (mv, a restore elsewhere, another mount point) those paths named nothing, and `gc`
took every detector for garbage. Rows now hold ``jobs/<key>/<file>``, resolved against the
artifact root in use; a path that does not end so is kept as it is.
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_json = sa.JSON().with_variant(JSONB(), "postgresql")
detectors = sa.table("detectors", sa.column("id", sa.Integer), sa.column("checkpoint_path", sa.Text), sa.column("metrics", _json))


def _relative(location):
    parts = location.rstrip("/").split("/") if isinstance(location, str) else []
    if len(parts) >= 3 and parts[-3] == "jobs" and parts[-2] and parts[-1]:
        return "/".join(parts[-3:])
    return location


def upgrade() -> None:
    conn = op.get_bind()
    for row_id, path, metrics in conn.execute(sa.select(detectors.c.id, detectors.c.checkpoint_path, detectors.c.metrics)).all():
        metrics = dict(metrics or {})
        plots = metrics.get("plots")
        if isinstance(plots, dict):
            metrics["plots"] = {k: _relative(v) for k, v in plots.items()}
        conn.execute(detectors.update().where(detectors.c.id == row_id).values(checkpoint_path=_relative(path), metrics=metrics))


def downgrade() -> None:
    pass  # relative locations stay: older code cannot resolve them, which is why downgrading is not offered past 0008
