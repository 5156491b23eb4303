"""Gate keys form a chain from the key pinned in the state dir: each row names the
key it replaced and carries that key's signature; one successor per key.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("gate_keys") as batch:
        batch.add_column(sa.Column("prev_kid", sa.String(64), nullable=True))
        batch.add_column(sa.Column("endorsement", sa.String(128), nullable=True))
    op.create_index("ux_gate_keys_prev", "gate_keys", ["prev_kid"], unique=True)


def downgrade() -> None:
    op.drop_index("ux_gate_keys_prev", table_name="gate_keys")
    with op.batch_alter_table("gate_keys") as batch:
        batch.drop_column("endorsement")
        batch.drop_column("prev_kid")
