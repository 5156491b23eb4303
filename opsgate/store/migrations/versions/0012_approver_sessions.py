"""Sessions of approvers signed in to the web UI (keyed by a hash of the cookie).

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "approver_sessions",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("approver", sa.String(254), nullable=False),
        sa.Column("token_issued_at", sa.Float, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
    )
    op.create_index("ix_approver_sessions_expires", "approver_sessions", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_approver_sessions_expires", table_name="approver_sessions")
    op.drop_table("approver_sessions")
