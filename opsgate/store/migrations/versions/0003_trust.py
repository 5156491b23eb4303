"""Trust: resources each agent has used, and its activity summary for the detectors.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "trust_resources",
        sa.Column("agent_did", sa.String(64), primary_key=True),
        sa.Column("resource", sa.String(256), primary_key=True),
        sa.Column("first_seen", sa.Float, nullable=False),
    )
    op.create_table(
        "trust_activity",
        sa.Column("agent_did", sa.String(64), primary_key=True),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("trust_activity")
    op.drop_table("trust_resources")
