"""Database layer: settings, SQLAlchemy models, sessions and Alembic migrations."""
