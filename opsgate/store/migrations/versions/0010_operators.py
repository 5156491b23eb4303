"""Operator tokens for the HTTP API, and the record of agent keys exported once.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "operators",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("token_issued_at", sa.Float, nullable=False),
        sa.Column("token_expires_at", sa.Float, nullable=False),
        sa.Column("disabled_at", sa.Float, nullable=True),
    )
    op.create_table(
        "agent_key_exports",
        sa.Column("did", sa.String(64), primary_key=True),
        sa.Column("exported_at", sa.Float, nullable=False),
        sa.Column("exports", sa.Integer, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("agent_key_exports")
    op.drop_table("operators")
