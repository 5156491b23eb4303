"""Deployments: releases per version (immutable digest), the deploy journal and
history, and the per-app deploy lock.

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "deploy_releases",
        sa.Column("env", sa.String(64), primary_key=True),
        sa.Column("app", sa.String(64), primary_key=True),
        sa.Column("version", sa.String(64), primary_key=True),
        sa.Column("digest", sa.String(80), nullable=True),
        sa.Column("kind", sa.String(8), nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("last_deployed_at", sa.Float, nullable=False),
        sa.Column("pruned_at", sa.Float, nullable=True),
    )
    op.create_table(
        "deployments",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
        sa.Column("env", sa.String(64), nullable=False),
        sa.Column("app", sa.String(64), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("backend", sa.String(16), nullable=False),
        sa.Column("digest", sa.String(80), nullable=True),
        sa.Column("previous_version", sa.String(64), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("phase", sa.String(16), nullable=False),
        sa.Column("health", sa.String(16), nullable=True),
        sa.Column("agent_did", sa.String(64), nullable=False),
        sa.Column("agent_name", sa.String(128), nullable=False),
        sa.Column("capability", sa.String(256), nullable=False),
        sa.Column("approval_id", sa.String(40), nullable=True),
        sa.Column("message", sa.Text, nullable=True),
        sa.Column("summary", sa.Text, nullable=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("started_at", sa.Float, nullable=False),
        sa.Column("finished_at", sa.Float, nullable=True),
    )
    op.create_index("ix_deployments_app", "deployments", ["env", "app", "id"])
    op.create_index("ix_deployments_status", "deployments", ["status"])
    op.create_table(
        "deploy_locks",
        sa.Column("env", sa.String(64), primary_key=True),
        sa.Column("app", sa.String(64), primary_key=True),
        sa.Column("token", sa.String(64), nullable=False),
        sa.Column("holder_did", sa.String(64), nullable=False),
        sa.Column("holder_name", sa.String(128), nullable=False),
        sa.Column("capability", sa.String(256), nullable=False),
        sa.Column("message", sa.Text, nullable=True),
        sa.Column("deployment_id", sa.BigInteger, nullable=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("process_start", sa.String(32), nullable=False),
        sa.Column("started_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("deploy_locks")
    op.drop_index("ix_deployments_status", "deployments")
    op.drop_index("ix_deployments_app", "deployments")
    op.drop_table("deployments")
    op.drop_table("deploy_releases")
