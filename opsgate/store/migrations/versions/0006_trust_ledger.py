"""Trust that cannot be farmed or drained: per-agent credit ledger, plan digests
already credited, and credentials already charged as misuse.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("agents") as batch:
        batch.add_column(sa.Column("trust_clean_since", sa.Float, nullable=True))
        batch.add_column(sa.Column("trust_credit_window", sa.Float, nullable=True))
        batch.add_column(
            sa.Column("trust_credit_points", sa.Integer, nullable=False, server_default="0")
        )
    op.create_table(
        "trust_credits",
        sa.Column("agent_did", sa.String(64), primary_key=True),
        sa.Column("digest", sa.String(64), primary_key=True),
        sa.Column("at", sa.Float, nullable=False),
    )
    op.create_table(
        "misuse_charges",
        sa.Column("jti", sa.String(64), primary_key=True),
        sa.Column("agent_did", sa.String(64), nullable=False),
        sa.Column("forget_after", sa.Float, nullable=False),
    )
    op.create_index("ix_misuse_forget", "misuse_charges", ["forget_after"])


def downgrade() -> None:
    op.drop_index("ix_misuse_forget", "misuse_charges")
    op.drop_table("misuse_charges")
    op.drop_table("trust_credits")
    with op.batch_alter_table("agents") as batch:
        batch.drop_column("trust_credit_points")
        batch.drop_column("trust_credit_window")
        batch.drop_column("trust_clean_since")
