"""Approvals: authenticated approvers, requests bound to a plan digest, decisions.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "approvers",
        sa.Column("email", sa.String(254), primary_key=True),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("disabled_at", sa.Float, nullable=True),
    )
    op.create_table(
        "approval_requests",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("requester_did", sa.String(64), nullable=False),
        sa.Column("requester_name", sa.String(128), nullable=False),
        sa.Column("sponsors", sa.Text, nullable=False),  # json list: the chain's sponsors
        sa.Column("capability", sa.String(256), nullable=False),
        sa.Column("operation", sa.Text, nullable=False),  # json
        sa.Column("plan", sa.Text, nullable=False),  # json
        sa.Column("requirements", sa.Text, nullable=False),  # json list
        sa.Column("reasons", sa.Text, nullable=False),  # json list
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
        sa.Column("decided_at", sa.Float, nullable=True),
        sa.Column("consumed_at", sa.Float, nullable=True),
    )
    op.create_index("ix_approval_status", "approval_requests", ["status"])
    op.create_table(
        "approval_decisions",
        sa.Column(
            "request_id", sa.String(40), sa.ForeignKey("approval_requests.id"), primary_key=True
        ),
        sa.Column("approver", sa.String(254), primary_key=True),
        sa.Column("decision", sa.String(16), nullable=False),
        sa.Column("comment", sa.Text, nullable=True),
        sa.Column("at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("approval_decisions")
    op.drop_index("ix_approval_status", "approval_requests")
    op.drop_table("approval_requests")
    op.drop_table("approvers")
