"""Database migrations as gated operations (`migrate:database/<db>`).

files      the configured directory of V<n>__<name>.sql files, checksums, the chain
classify   findings per statement (pglast for PostgreSQL, sqlglot for SQLite); pure
planner    history + files -> the plan an approval binds; pure
runner     lock, run, record, repair (all SQL through opsgate.store.migration_target)
executor   MigrationExecutor: the Executor the gate routes `migrate` operations to
"""

from __future__ import annotations

from opsgate.operations.migrate.classify import FileAnalysis, Finding, Statement, classify
from opsgate.operations.migrate.codes import CODES, Code
from opsgate.operations.migrate.executor import (
    ConfigCredentials,
    MigrateParams,
    MigrationExecutor,
    MigrationStatus,
    TargetCredentials,
)
from opsgate.operations.migrate.files import MigrationFile, load_directory
from opsgate.operations.migrate.planner import MigrationPlan, build_plan

__all__ = [
    "CODES",
    "Code",
    "ConfigCredentials",
    "FileAnalysis",
    "Finding",
    "MigrateParams",
    "MigrationExecutor",
    "MigrationFile",
    "MigrationPlan",
    "MigrationStatus",
    "Statement",
    "TargetCredentials",
    "build_plan",
    "classify",
    "load_directory",
]
