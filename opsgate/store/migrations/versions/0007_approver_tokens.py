"""Approver tokens expire (and record when they were issued); an approver who
approved may later deny, so a decision row is keyed by its verdict too.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# Tokens issued before expiry existed get the default lifetime from their creation.
_DEFAULT_TTL_SECONDS = 90 * 86400


def upgrade() -> None:
    with op.batch_alter_table("approvers") as batch:
        batch.add_column(sa.Column("token_issued_at", sa.Float, nullable=True))
        batch.add_column(sa.Column("token_expires_at", sa.Float, nullable=True))
    approvers = sa.table(
        "approvers",
        sa.column("created_at", sa.Float),
        sa.column("token_issued_at", sa.Float),
        sa.column("token_expires_at", sa.Float),
    )
    op.execute(
        approvers.update().values(
            token_issued_at=approvers.c.created_at,
            token_expires_at=approvers.c.created_at + _DEFAULT_TTL_SECONDS,
        )
    )
    with op.batch_alter_table("approvers") as batch:
        batch.alter_column("token_issued_at", existing_type=sa.Float, nullable=False)
        batch.alter_column("token_expires_at", existing_type=sa.Float, nullable=False)

    op.create_table(
        "approval_decisions_v2",
        sa.Column(
            "request_id", sa.String(40), sa.ForeignKey("approval_requests.id"), primary_key=True
        ),
        sa.Column("approver", sa.String(254), primary_key=True),
        sa.Column("decision", sa.String(16), primary_key=True),
        sa.Column("comment", sa.Text, nullable=True),
        sa.Column("at", sa.Float, nullable=False),
    )
    op.execute(
        "INSERT INTO approval_decisions_v2 (request_id, approver, decision, comment, at) "
        "SELECT request_id, approver, decision, comment, at FROM approval_decisions"
    )
    op.drop_table("approval_decisions")
    op.rename_table("approval_decisions_v2", "approval_decisions")


def downgrade() -> None:
    op.create_table(
        "approval_decisions_v1",
        sa.Column(
            "request_id", sa.String(40), sa.ForeignKey("approval_requests.id"), primary_key=True
        ),
        sa.Column("approver", sa.String(254), primary_key=True),
        sa.Column("decision", sa.String(16), nullable=False),
        sa.Column("comment", sa.Text, nullable=True),
        sa.Column("at", sa.Float, nullable=False),
    )
    # A withdrawn approval keeps only its deny: the old shape holds one verdict each.
    op.execute(
        "INSERT INTO approval_decisions_v1 (request_id, approver, decision, comment, at) "
        "SELECT request_id, approver, decision, comment, at FROM approval_decisions d "
        "WHERE decision = 'deny' OR NOT EXISTS (SELECT 1 FROM approval_decisions x "
        "WHERE x.request_id = d.request_id AND x.approver = d.approver AND x.decision = 'deny')"
    )
    op.drop_table("approval_decisions")
    op.rename_table("approval_decisions_v1", "approval_decisions")
    with op.batch_alter_table("approvers") as batch:
        batch.drop_column("token_expires_at")
        batch.drop_column("token_issued_at")
