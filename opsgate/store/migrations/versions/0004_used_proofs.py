"""Proofs of possession already accepted, shared by every replica (replay protection).

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "used_proofs",
        sa.Column("jti", sa.String(64), primary_key=True),
        sa.Column("expires_at", sa.Float, nullable=False),
    )
    op.create_index("ix_used_proofs_expires", "used_proofs", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_used_proofs_expires", "used_proofs")
    op.drop_table("used_proofs")
