"""Tags, lineage (parent version, external run, dirty code) and artifact locations.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("model_versions") as batch:
        batch.add_column(sa.Column("parent", sa.String(160), nullable=True))
        batch.add_column(sa.Column("run_ref", sa.String(512), nullable=False,
                                   server_default=""))
        batch.add_column(sa.Column("code_dirty", sa.Boolean, nullable=True))
        batch.add_column(sa.Column("artifact_uri", sa.String(1024), nullable=True))
        batch.create_index("ix_model_versions_created_at", ["created_at"])
    op.create_table(
        "model_tags",
        sa.Column("name", sa.String(128), primary_key=True),
        # 0 tags the model as a whole; N tags version N
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("key", sa.String(128), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("model_tags")
    with op.batch_alter_table("model_versions") as batch:
        batch.drop_index("ix_model_versions_created_at")
        for col in ("artifact_uri", "code_dirty", "run_ref", "parent"):
            batch.drop_column(col)
