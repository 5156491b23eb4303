"""Policy: YAML rules compiled once into closures; `decide` returns a Decision value.

    policies = load_policies("policies/")            # PolicyError lists every problem
    decision = policies.decide(PolicyRequest(action="deploy", resource="production/web",
                                             environment="production", agent_trust_score=920))

Pure: no I/O after loading and no clock reads (the request carries the time).
"""

from __future__ import annotations

from opsgate.policy.condition import Condition, compile_condition
from opsgate.policy.engine import NO_MATCH_REASON, Policy, PolicySet, Rule
from opsgate.policy.loader import (
    load_policies,
    parse_duration,
    parse_policies,
    policy_digest,
    policy_files,
)
from opsgate.policy.problems import Problem
from opsgate.policy.request import PolicyRequest
from opsgate.policy.testing import (
    CaseResult,
    CasesReport,
    PolicyCase,
    load_cases,
    run_case_file,
    run_cases,
)
from opsgate.policy.vocabulary import describe as vocabulary

__all__ = [
    "NO_MATCH_REASON",
    "CaseResult",
    "CasesReport",
    "Condition",
    "Policy",
    "PolicyCase",
    "PolicyRequest",
    "PolicySet",
    "Problem",
    "Rule",
    "compile_condition",
    "load_cases",
    "load_policies",
    "parse_duration",
    "parse_policies",
    "policy_digest",
    "policy_files",
    "run_case_file",
    "run_cases",
    "vocabulary",
]
