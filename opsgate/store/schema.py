"""opsgate's own schema, as SQLAlchemy Core tables. Alembic migrations create it.

Times are UTC epoch seconds (float): cheap to compare on the hot path and
identical on SQLite and PostgreSQL.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

gate_meta = Table(
    "gate_meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

# Monotonic counters taken with an UPDATE inside the writer's transaction, so ids
# become visible in commit order (replicas never miss one).
counters = Table(
    "counters",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", BigInteger, nullable=False),
)

gate_keys = Table(
    "gate_keys",
    metadata,
    Column("kid", String(64), primary_key=True),
    Column("public_key", String(64), nullable=False),  # base64url raw Ed25519
    Column("created_at", Float, nullable=False),
    Column("retired_at", Float, nullable=True),  # informational: the chain decides
    # The key this one replaced, and that key's signature over this one (keyring.py);
    # both NULL only for the key pinned in the state dir.
    Column("prev_kid", String(64), nullable=True),
    Column("endorsement", String(128), nullable=True),
)
Index("ux_gate_keys_prev", gate_keys.c.prev_kid, unique=True)

agents = Table(
    "agents",
    metadata,
    Column("did", String(64), primary_key=True),
    Column("name", String(128), nullable=False, unique=True),
    Column("sponsor", String(320), nullable=False),
    Column("parent_did", String(64), ForeignKey("agents.did"), nullable=True),
    Column("depth", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=True),
    Column("status", String(16), nullable=False),
    Column("status_reason", Text, nullable=True),
    Column("trust_score", Integer, nullable=False),
    Column("initial_trust", Integer, nullable=False),
    # Every credential issued (iat) before this is revoked: O(1) per-agent revocation.
    Column("credentials_not_before", Float, nullable=True),
    # The latest iat of a credential issued to this agent (set in the issuance's
    # audit transaction), so a revocation's cut-off is never earlier than it.
    Column("last_issued_at", Float, nullable=True),
    # The anti-farming ledger, changed under the row lock with the score: the last
    # loss (null: created_at) and the current 24 h credit window and its points.
    Column("trust_clean_since", Float, nullable=True),
    Column("trust_credit_window", Float, nullable=True),
    Column("trust_credit_points", Integer, nullable=False, server_default="0"),
    # The signed grant record (canonical JSON) and the signer's signature over it.
    Column("record", Text, nullable=False),
    Column("signature", String(128), nullable=False),
    Column("signer", String(128), nullable=False),  # parent did, or "gate:<kid>" for roots
    Column("updated_at", Float, nullable=False),
)
Index("ix_agents_parent", agents.c.parent_did)

revoked_credentials = Table(
    "revoked_credentials",
    metadata,
    Column("jti", String(64), primary_key=True),
    Column("agent_did", String(64), nullable=True),
    Column("expires_at", Float, nullable=False),
    Column("revoked_at", Float, nullable=False),
    Column("reason", Text, nullable=True),
)
Index("ix_revoked_expires", revoked_credentials.c.expires_at)

# Change feed for cache invalidation across replicas: kind in (jti, agent, key).
state_changes = Table(
    "state_changes",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=False),
    Column("kind", String(16), nullable=False),
    Column("subject", String(128), nullable=False),
    Column("at", Float, nullable=False),
)

audit_events = Table(
    "audit_events",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("at", Float, nullable=False),
    Column("type", String(64), nullable=False),
    Column("actor", String(128), nullable=True),
    Column("body", Text, nullable=False),  # canonical JSON of the event, hashed as stored
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
)
Index("ix_audit_type", audit_events.c.type)
Index("ix_audit_actor", audit_events.c.actor)

audit_head = Table(
    "audit_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
)

audit_checkpoints = Table(
    "audit_checkpoints",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("hash", String(64), nullable=False),
    Column("at", Float, nullable=False),
    Column("kid", String(64), nullable=False),
    Column("signature", String(128), nullable=False),
)

approvers = Table(
    "approvers",
    metadata,
    Column("email", String(254), primary_key=True),
    Column("token_hash", String(64), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("disabled_at", Float, nullable=True),
    # The current token's issue and expiry times (rotation replaces both).
    Column("token_issued_at", Float, nullable=False),
    Column("token_expires_at", Float, nullable=False),
)

# Signed-in approvers of the web UI: the row is keyed by a hash of the cookie's
# secret (never the secret) and bound to the approver's current token, so a
# rotation or a disabled approver ends every session at once.
approver_sessions = Table(
    "approver_sessions",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("approver", String(254), nullable=False),
    Column("token_issued_at", Float, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
)
Index("ix_approver_sessions_expires", approver_sessions.c.expires_at)

approval_requests = Table(
    "approval_requests",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("digest", String(64), nullable=False),
    Column("requester_did", String(64), nullable=False),
    Column("requester_name", String(128), nullable=False),
    Column("sponsors", Text, nullable=False),
    Column("capability", String(256), nullable=False),
    Column("operation", Text, nullable=False),
    Column("plan", Text, nullable=False),
    Column("requirements", Text, nullable=False),
    Column("reasons", Text, nullable=False),
    Column("status", String(16), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("decided_at", Float, nullable=True),
    Column("consumed_at", Float, nullable=True),
    # The iat of the credential that asked (null for requests stored before 0015).
    Column("asked_with_iat", Float, nullable=True),
)
Index("ix_approval_status", approval_requests.c.status)

approval_decisions = Table(
    "approval_decisions",
    metadata,
    Column("request_id", String(40), ForeignKey("approval_requests.id"), primary_key=True),
    Column("approver", String(254), primary_key=True),
    # Part of the key: an approver who approved may later deny (withdraw it).
    Column("decision", String(16), primary_key=True),
    Column("comment", Text, nullable=True),
    Column("at", Float, nullable=False),
)

trust_resources = Table(
    "trust_resources",
    metadata,
    Column("agent_did", String(64), primary_key=True),
    Column("resource", String(256), primary_key=True),
    Column("first_seen", Float, nullable=False),
)

trust_activity = Table(
    "trust_activity",
    metadata,
    Column("agent_did", String(64), primary_key=True),
    Column("state", Text, nullable=False),
    Column("updated_at", Float, nullable=False),
)

used_proofs = Table(
    "used_proofs",
    metadata,
    Column("jti", String(64), primary_key=True),
    Column("expires_at", Float, nullable=False),
)
Index("ix_used_proofs_expires", used_proofs.c.expires_at)

# Plan digests an agent has been credited for: the same plan never earns twice.
trust_credits = Table(
    "trust_credits",
    metadata,
    Column("agent_did", String(64), primary_key=True),
    Column("digest", String(64), primary_key=True),
    Column("at", Float, nullable=False),
)

# Credentials already charged as misuse, written with the charge: once per
# credential across restarts and replicas. Kept until no replica could still
# charge the credential (`forget_after`, then a margin for clock skew).
misuse_charges = Table(
    "misuse_charges",
    metadata,
    Column("jti", String(64), primary_key=True),
    Column("agent_did", String(64), nullable=False),
    Column("forget_after", Float, nullable=False),
)
Index("ix_misuse_forget", misuse_charges.c.forget_after)

# The embedded secret backend: one row per version, AES-256-GCM sealed. The associated
# data binds gate id, path and version, so a ciphertext copied to another row (or
# another gate's database) does not decrypt. `key_id` names the master key that
# sealed it (derived one-way from the key); a soft-deleted version keeps its row.
secret_versions = Table(
    "secret_versions",
    metadata,
    Column("path", String(256), primary_key=True),
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("key_id", String(32), nullable=False),
    Column("nonce", LargeBinary(12), nullable=False),
    Column("ciphertext", LargeBinary, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("created_by", String(128), nullable=False),
    Column("deleted_at", Float, nullable=True),
)

# Operators of the HTTP API (register, suspend, audit): token stored only hashed,
# expiring, rotated at once like an approver's.
operators = Table(
    "operators",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("token_hash", String(64), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("token_issued_at", Float, nullable=False),
    Column("token_expires_at", Float, nullable=False),
    Column("disabled_at", Float, nullable=True),
)

# Agent private keys handed out of the state dir (`agents export-key`): once each,
# unless an operator forces another export with a reason (audited).
agent_key_exports = Table(
    "agent_key_exports",
    metadata,
    Column("did", String(64), primary_key=True),
    Column("exported_at", Float, nullable=False),
    Column("exports", Integer, nullable=False),
)

# Releases the deploy executor wrote (or a command backend deployed), per
# (environment, app, version): a version names one artifact digest forever.
deploy_releases = Table(
    "deploy_releases",
    metadata,
    Column("env", String(64), primary_key=True),
    Column("app", String(64), primary_key=True),
    Column("version", String(64), primary_key=True),
    Column("digest", String(80), nullable=True),  # null: a command deploy without an artifact
    Column("kind", String(8), nullable=True),  # file | dir (how the local release is laid out)
    Column("created_at", Float, nullable=False),
    Column("last_deployed_at", Float, nullable=False),
    Column("pruned_at", Float, nullable=True),
)

# Every deploy and rollback: its journal while it runs (phase, the release to go back
# to, written before the switch) and its history once finished. The evidence for
# "staging before production" is a succeeded row here, which only the gate writes.
deployments = Table(
    "deployments",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("env", String(64), nullable=False),
    Column("app", String(64), nullable=False),
    Column("version", String(64), nullable=False),
    Column("kind", String(16), nullable=False),  # deploy | rollback
    Column("backend", String(16), nullable=False),  # local | command
    Column("digest", String(80), nullable=True),
    Column("previous_version", String(64), nullable=True),
    Column("status", String(16), nullable=False),  # running | succeeded | failed | interrupted
    Column("phase", String(16), nullable=False),
    Column("health", String(16), nullable=True),
    Column("agent_did", String(64), nullable=False),
    Column("agent_name", String(128), nullable=False),
    Column("capability", String(256), nullable=False),
    Column("approval_id", String(40), nullable=True),
    Column("message", Text, nullable=True),
    Column("summary", Text, nullable=True),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("started_at", Float, nullable=False),
    Column("finished_at", Float, nullable=True),
)
Index("ix_deployments_app", deployments.c.env, deployments.c.app, deployments.c.id)
Index("ix_deployments_status", deployments.c.status)

# One deploy or rollback at a time per (environment, app): who holds it and why.
deploy_locks = Table(
    "deploy_locks",
    metadata,
    Column("env", String(64), primary_key=True),
    Column("app", String(64), primary_key=True),
    Column("token", String(64), nullable=False),
    Column("holder_did", String(64), nullable=False),
    Column("holder_name", String(128), nullable=False),
    Column("capability", String(256), nullable=False),
    Column("message", Text, nullable=True),
    Column("deployment_id", BigInteger, nullable=True),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("process_start", String(32), nullable=False),
    Column("started_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
)

# Operations between their attempt and outcome records: written in the attempt's
# audit transaction, deleted in the outcome's. A row whose process is gone is a run
# that never got its outcome; the next start records one (outcome "unknown").
operation_runs = Table(
    "operation_runs",
    metadata,
    Column("attempt_seq", BigInteger, primary_key=True),
    Column("agent_did", String(64), nullable=False),
    Column("capability", String(256), nullable=False),
    Column("digest", String(80), nullable=True),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("process_start", String(32), nullable=False),
    Column("started_at", Float, nullable=False),
)

# Audit events of changes that commit without waiting for the audit head (a
# revocation must hold even while a stalled replica holds the head): the prepared
# event as JSON, chained into audit_events by the next flush, and deleted there.
audit_outbox = Table(
    "audit_outbox",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("at", Float, nullable=False),
    Column("event", Text, nullable=False),
)
