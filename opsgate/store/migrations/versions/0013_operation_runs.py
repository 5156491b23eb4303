"""Operations that are running: a row written with the attempt's audit event and
deleted with its outcome's, so a run whose outcome was never recorded (its process
died, or its database connection did) is found and given one on the next start.

Revision ID: 0013
Revises: 0012
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "operation_runs",
        sa.Column("attempt_seq", sa.BigInteger, primary_key=True),
        sa.Column("agent_did", sa.String(64), nullable=False),
        sa.Column("capability", sa.String(256), nullable=False),
        sa.Column("digest", sa.String(80), nullable=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("process_start", sa.String(32), nullable=False),
        sa.Column("started_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("operation_runs")
