"""Policy decision latency, side by side: opsgate vs Cedar (cedarpy) vs Rego (regorus).

The same 20 seed-style rules (deploys, migrations, secrets, monitoring; environments,
destructive plans, trust scores, change windows) are written three times. First the
three engines must agree on every generated request, else the bench prints the
disagreements and exits 1: a fast wrong answer is worth nothing. Then each engine is
timed per decision, plus opsgate on a 1,000-rule policy spread over 50 actions.

Each engine gets its input already in its own form (a PolicyRequest, a Cedar request
dict, a JSON string for Rego), so what is timed is one decision call plus, for the
two peers, reading the three-valued effect out of their answer (Cedar and Rego have
no native "require approval": deny and approval rules become forbid/sets).

    python -m bench.policy            # the full run
    python -m bench.policy --quick    # fewer samples, for a smoke run
    python -m bench.policy --strict   # exit 1 when a target is missed too
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opsgate.policy import PolicyRequest, PolicySet, parse_policies

SEED = 20_240_601
TARGET_P50_US = 5.0
TARGET_P50_1000_US = 50.0
TARGET_SPEEDUP = 10.0


@dataclass(frozen=True)
class BenchRule:
    """One rule in all three languages. `cedar_action` is the Cedar scope's action part."""

    id: str
    effect: str  # allow | deny | require_approval
    opsgate: str
    cedar_action: str
    cedar_when: str
    rego: str
    approvers: str = "[sre-team@company.com]"


# fmt: off
RULES: tuple[BenchRule, ...] = (
    BenchRule("r01", "require_approval",
              "action == 'deploy' and environment == 'production'",
              'action == Action::"deploy"', 'context.environment == "production"',
              'input.action == "deploy"\n    input.environment == "production"'),
    BenchRule("r02", "require_approval",
              "agent.trust_score < 800 and environment == 'production'",
              "action", 'context.trust_score < 800 && context.environment == "production"',
              'input.trust_score < 800\n    input.environment == "production"',
              "[security@company.com]"),
    BenchRule("r03", "deny", "agent.trust_score < 500",
              "action", "context.trust_score < 500",
              "input.trust_score < 500"),
    BenchRule("r04", "deny", "destructive and environment == 'production'",
              "action", 'context.destructive && context.environment == "production"',
              'input.destructive\n    input.environment == "production"'),
    BenchRule("r05", "require_approval", "destructive and environment == 'staging'",
              "action", 'context.destructive && context.environment == "staging"',
              'input.destructive\n    input.environment == "staging"',
              "[dba-team@company.com]"),
    BenchRule("r06", "deny",
              "action == 'deploy' and environment == 'production'"
              " and (time.hour < 9 or time.hour >= 17)",
              'action == Action::"deploy"',
              'context.environment == "production" && (context.hour < 9 || context.hour >= 17)',
              'input.action == "deploy"\n    input.environment == "production"\n'
              "    not office_hours"),
    BenchRule("r07", "deny",
              "action == 'deploy' and environment == 'production' and time.weekday >= 5",
              'action == Action::"deploy"',
              'context.environment == "production" && context.weekday >= 5',
              'input.action == "deploy"\n    input.environment == "production"\n'
              "    input.weekday >= 5"),
    BenchRule("r08", "allow", "action == 'deploy' and environment == 'staging'",
              'action == Action::"deploy"', 'context.environment == "staging"',
              'input.action == "deploy"\n    input.environment == "staging"'),
    BenchRule("r09", "require_approval",
              "action == 'migrate' and environment == 'production'",
              'action == Action::"migrate"', 'context.environment == "production"',
              'input.action == "migrate"\n    input.environment == "production"',
              "[dba-team@company.com]"),
    BenchRule("r10", "allow",
              "action == 'migrate' and environment in ['dev', 'staging'] and not destructive",
              'action == Action::"migrate"',
              '["dev", "staging"].contains(context.environment) && !context.destructive',
              'input.action == "migrate"\n    input.environment in {"dev", "staging"}\n'
              "    not input.destructive"),
    BenchRule("r11", "deny",
              "action == 'migrate' and environment == 'production'"
              " and time.hour >= 12 and time.hour < 14",
              'action == Action::"migrate"',
              'context.environment == "production" && context.hour >= 12 && context.hour < 14',
              'input.action == "migrate"\n    input.environment == "production"\n'
              "    input.hour >= 12\n    input.hour < 14"),
    BenchRule("r12", "require_approval",
              "action in ['write', 'rotate'] and startswith(resource, 'secrets/prod/')",
              'action in [Action::"write", Action::"rotate"]',
              'context.resource like "secrets/prod/*"',
              'input.action in {"write", "rotate"}\n'
              '    startswith(input.resource, "secrets/prod/")',
              "[security@company.com]"),
    BenchRule("r13", "deny",
              "action == 'delete' and startswith(resource, 'secrets/prod/')",
              'action == Action::"delete"', 'context.resource like "secrets/prod/*"',
              'input.action == "delete"\n    startswith(input.resource, "secrets/prod/")'),
    BenchRule("r14", "deny",
              "action == 'read' and startswith(resource, 'secrets/') and agent.depth > 2",
              'action == Action::"read"',
              'context.resource like "secrets/*" && context.depth > 2',
              'input.action == "read"\n    startswith(input.resource, "secrets/")\n'
              "    input.depth > 2"),
    BenchRule("r15", "require_approval",
              "action == 'read' and startswith(resource, 'secrets/prod/')"
              " and agent.trust_score < 900",
              'action == Action::"read"',
              'context.resource like "secrets/prod/*" && context.trust_score < 900',
              'input.action == "read"\n    startswith(input.resource, "secrets/prod/")\n'
              "    input.trust_score < 900",
              "[security@company.com]"),
    BenchRule("r16", "allow", "action == 'read' and startswith(resource, 'monitoring/')",
              'action == Action::"read"', 'context.resource like "monitoring/*"',
              'input.action == "read"\n    startswith(input.resource, "monitoring/")'),
    BenchRule("r17", "deny",
              "action in ['write', 'delete'] and startswith(resource, 'monitoring/')",
              'action in [Action::"write", Action::"delete"]',
              'context.resource like "monitoring/*"',
              'input.action in {"write", "delete"}\n'
              '    startswith(input.resource, "monitoring/")'),
    BenchRule("r18", "require_approval",
              "action == 'restart' and environment == 'production'"
              " and (time.hour < 6 or time.hour >= 22)",
              'action == Action::"restart"',
              'context.environment == "production" && (context.hour < 6 || context.hour >= 22)',
              'input.action == "restart"\n    input.environment == "production"\n'
              "    night"),
    BenchRule("r19", "deny", "agent.depth >= 3 and environment == 'production'",
              "action", 'context.depth >= 3 && context.environment == "production"',
              'input.depth >= 3\n    input.environment == "production"'),
    BenchRule("r20", "require_approval",
              "action == 'scale' and environment == 'production' and agent.trust_score < 900",
              'action == Action::"scale"',
              'context.environment == "production" && context.trust_score < 900',
              'input.action == "scale"\n    input.environment == "production"\n'
              "    input.trust_score < 900"),
)
# fmt: on

GROUPS = """
groups:
  sre-team@company.com: [john@company.com, jane@company.com]
  dba-team@company.com: [dana@company.com, dave@company.com]
"""


def opsgate_yaml(rules: Sequence[BenchRule]) -> str:
    lines = ["policies:", "  - name: bench", "    rules:"]
    for r in rules:
        lines.append(f'      - condition: "{r.opsgate}"')
        lines.append(f"        action: {r.effect}")
        lines.append(f"        description: {r.id}")
        if r.effect == "require_approval":
            lines.append(f"        approvers: {r.approvers}")
    return "\n".join(lines) + "\n" + GROUPS


def cedar_text(rules: Sequence[BenchRule]) -> str:
    """Deny and approval rules are forbids (told apart by @id); no match means allow."""
    out = ['@id("base")\npermit (principal, action, resource);']
    for r in rules:
        kind = "permit" if r.effect == "allow" else "forbid"
        out.append(
            f'@id("{r.id}")\n{kind} (principal, {r.cedar_action}, resource)\n'
            f"when {{ {r.cedar_when} }};"
        )
    return "\n\n".join(out) + "\n"


def rego_text(rules: Sequence[BenchRule]) -> str:
    sets = {"deny": "deny", "require_approval": "approval", "allow": "allowed"}
    out = [
        "package opsgate",
        "import rego.v1",
        "",
        "office_hours if {\n    input.hour >= 9\n    input.hour < 17\n}",
        "night if input.hour < 6",
        "night if input.hour >= 22",
    ]
    for r in rules:
        out.append(f'{sets[r.effect]} contains "{r.id}" if {{\n    {r.rego}\n}}')
    out += [
        'default effect := "allow"',
        'effect := "deny" if count(deny) > 0',
        'effect := "require_approval" if {\n    count(deny) == 0\n    count(approval) > 0\n}',
    ]
    return "\n\n".join(out) + "\n"


# --------------------------------------------------------------------------- requests

ACTIONS = {
    "deploy": ["production/app-web", "staging/app-web", "dev/api"],
    "migrate": ["database/orders", "database/users"],
    "read": ["secrets/prod/db", "secrets/staging/key", "monitoring/production", "logs/app"],
    "write": ["secrets/prod/api-key", "secrets/dev/x", "monitoring/alerts"],
    "rotate": ["secrets/prod/db", "secrets/staging/db"],
    "delete": ["secrets/prod/old", "monitoring/dash", "secrets/dev/tmp"],
    "restart": ["production/app-web", "staging/worker"],
    "scale": ["production/app-web", "staging/app-web"],
}


def generate_requests(count: int, seed: int = SEED) -> list[PolicyRequest]:
    rng = random.Random(seed)
    out = []
    for i in range(count):
        action = rng.choice(sorted(ACTIONS))
        out.append(
            PolicyRequest(
                action=action,
                resource=rng.choice(ACTIONS[action]),
                environment=rng.choice(["production", "production", "staging", "dev"]),
                destructive=rng.random() < 0.25,
                agent_name=f"agent-{i % 7}",
                agent_trust_score=rng.choice([300, 499, 500, 700, 799, 800, 899, 900, 950]),
                agent_depth=rng.choice([0, 1, 1, 2, 3]),
                hour=rng.randrange(24),
                weekday=rng.randrange(7),
            )
        )
    return out


def cedar_request(r: PolicyRequest) -> dict[str, Any]:
    return {
        "principal": f'Agent::"{r.agent_name}"',
        "action": f'Action::"{r.action}"',
        "resource": f'Resource::"{r.resource}"',
        "context": {
            "resource": r.resource,
            "environment": r.environment or "",
            "destructive": r.destructive,
            "trust_score": r.agent_trust_score,
            "depth": r.agent_depth,
            "hour": r.hour,
            "weekday": r.weekday,
        },
    }


def rego_input(r: PolicyRequest) -> str:
    return json.dumps(
        {
            "action": r.action,
            "resource": r.resource,
            "environment": r.environment,
            "destructive": r.destructive,
            "trust_score": r.agent_trust_score,
            "depth": r.agent_depth,
            "hour": r.hour,
            "weekday": r.weekday,
        }
    )


# --------------------------------------------------------------------------- engines


@dataclass
class Engine:
    name: str
    rules: int
    decide: Callable[[Any], str]
    inputs: list[Any]
    note: str = ""


def opsgate_engine(policies: PolicySet, requests: list[PolicyRequest], name: str) -> Engine:
    decide = policies.decide
    return Engine(name, len(policies), lambda r: decide(r).effect, requests)


def cedar_engine(requests: list[PolicyRequest]) -> Engine | str:
    try:
        import cedarpy
    except ImportError as exc:  # the peer is optional: report it and go on
        return f"cedarpy unavailable ({exc.name})"
    policy_set = cedarpy.PolicySet.from_str(cedar_text(RULES))
    entities = cedarpy.Entities.from_json_str("[]")
    effects = {r.id: r.effect for r in RULES}
    is_authorized = cedarpy.is_authorized
    allow = cedarpy.Decision.Allow

    def decide(request: dict[str, Any]) -> str:
        result = is_authorized(request, policy_set, entities)
        if result.decision == allow:
            return "allow"
        ids = result.diagnostics.id_annotations_by_reason.values()
        found = {effects.get(i, "deny") for i in ids}
        return "deny" if "deny" in found or not found else "require_approval"

    return Engine("cedarpy", len(RULES), decide, [cedar_request(r) for r in requests])


def rego_engine(requests: list[PolicyRequest], workdir: Path) -> Engine | str:
    try:
        import opa_eval
    except ImportError as exc:
        return f"opa-eval unavailable ({exc.name})"
    path = workdir / "bench.rego"
    path.write_text(rego_text(RULES))
    evaluator = opa_eval.OpaEval(str(path), query="data.opsgate.effect")
    evaluate = evaluator.evaluate_parsed
    return Engine(
        "rego (regorus)", len(RULES), lambda s: str(evaluate(s)), [rego_input(r) for r in requests]
    )


def big_policy(rules: int = 1000, actions: int = 50) -> PolicySet:
    """A 1,000-rule policy over 50 actions, plus a few rules that apply to every action."""
    templates = (
        "action == '{a}' and environment == '{env}' and agent.trust_score < {t}",
        "action == '{a}' and destructive and time.hour >= {h}",
        "action in ['{a}', '{b}'] and startswith(resource, 'svc-{k}/')",
        "action == '{a}' and params.replicas != null and params.replicas > {n}",
        "action == '{a}' and agent.depth > {d} and environment in ['production', 'staging']",
    )
    effects = ("deny", "require_approval", "allow")
    lines = ["policies:", "  - name: big", "    rules:"]
    for i in range(rules):
        if i % 100 == 99:  # 10 rules with no action constraint
            cond = f"agent.name == 'blocked-{i}' or agent.trust_score < {i % 50}"
        else:
            cond = templates[i % len(templates)].format(
                a=f"op{i % actions}",
                b=f"op{(i + 1) % actions}",
                env=("production", "staging")[i % 2],
                t=500 + i % 400,
                h=i % 24,
                k=i % 30,
                n=i % 40,
                d=i % 4,
            )
        effect = effects[i % 3]
        lines += [f'      - condition: "{cond}"', f"        action: {effect}"]
        if effect == "require_approval":
            lines.append("        approvers: [sre@company.com]")
    return parse_policies("\n".join(lines) + "\n", "<bench:1000>")


def big_requests(count: int, actions: int = 50, seed: int = SEED) -> list[PolicyRequest]:
    rng = random.Random(seed + 1)
    return [
        PolicyRequest(
            action=f"op{rng.randrange(actions)}",
            resource=f"svc-{rng.randrange(30)}/item",
            environment=rng.choice(["production", "staging", "dev"]),
            destructive=rng.random() < 0.3,
            agent_name=f"agent-{i % 5}",
            agent_trust_score=rng.randrange(400, 1001),
            agent_depth=rng.randrange(4),
            params={"replicas": rng.randrange(60)},
            hour=rng.randrange(24),
            weekday=rng.randrange(7),
        )
        for i in range(count)
    ]


# --------------------------------------------------------------------------- timing


@dataclass(frozen=True)
class Timing:
    p50_us: float
    p95_us: float
    samples: int


def measure(fn: Callable[[Any], Any], inputs: Sequence[Any], samples: int) -> Timing:
    """Per-call latency with perf_counter_ns, after an unrecorded warm-up, GC paused."""
    for x in inputs[: min(len(inputs), 200)]:
        fn(x)
    clock = time.perf_counter_ns
    n = len(inputs)
    out = [0] * samples
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for i in range(samples):
            x = inputs[i % n]
            t0 = clock()
            fn(x)
            out[i] = clock() - t0
    finally:
        if gc_was_enabled:
            gc.enable()
    out.sort()
    return Timing(out[samples // 2] / 1000, out[int(samples * 0.95)] / 1000, samples)


# --------------------------------------------------------------------------- main


def check_agreement(engines: list[Engine], requests: list[PolicyRequest]) -> list[str]:
    problems = []
    for i, request in enumerate(requests):
        answers = {e.name: e.decide(e.inputs[i]) for e in engines}
        if len(set(answers.values())) > 1:
            problems.append(f"request {i} {request.to_dict()}: {answers}")
    return problems


def print_table(
    rows: list[tuple[str, int, Timing]], cedar: Timing | None, skipped: list[str]
) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # plain text is enough without Rich
        for name, rules, t in rows:
            print(f"{name:28} {rules:6} p50 {t.p50_us:9.2f} us  p95 {t.p95_us:9.2f} us")
        return
    table = Table(title="policy decision latency (per decision, lower is better)")
    for col, justify in (
        ("engine", "left"),
        ("rules", "right"),
        ("p50 µs", "right"),
        ("p95 µs", "right"),
        ("samples", "right"),
        ("p50 vs cedarpy", "right"),
    ):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for name, rules, t in rows:
        if cedar is None or rules != len(RULES):
            ratio = "n/a"  # only the same 20 rules compare fairly
        elif name == "cedarpy":
            ratio = "1.0×"
        else:
            ratio = f"{cedar.p50_us / t.p50_us:.1f}× faster"
        table.add_row(name, str(rules), f"{t.p50_us:.2f}", f"{t.p95_us:.2f}", str(t.samples), ratio)
    console = Console()
    console.print(table)
    for note in skipped:
        console.print(f"skipped: {note}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.policy", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer samples")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--requests", type=int, default=200, help="generated requests (>= 50)")
    args = parser.parse_args(argv)
    count = max(50, args.requests)
    fast_samples, peer_samples = (20_000, 3_000) if args.quick else (100_000, 20_000)

    policies = parse_policies(opsgate_yaml(RULES), "<bench:20>")
    requests = generate_requests(count)
    engines = [opsgate_engine(policies, requests, "opsgate")]
    skipped: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for made in (cedar_engine(requests), rego_engine(requests, Path(tmp))):
            if isinstance(made, str):
                skipped.append(made)
            else:
                engines.append(made)

        problems = check_agreement(engines, requests)
        effects = [engines[0].decide(r) for r in requests]
        mix = {e: effects.count(e) for e in ("allow", "deny", "require_approval")}
        names = ", ".join(e.name for e in engines)
        if problems:
            print(f"FAIL: engines disagree on {len(problems)} of {count} requests ({names}):")
            for line in problems[:20]:
                print(f"  {line}")
            return 1
        print(f"agreement: {names} give the same effect on all {count} requests {mix}")

        rows: list[tuple[str, int, Timing]] = []
        for engine in engines:
            samples = fast_samples if engine.name == "opsgate" else peer_samples
            rows.append((engine.name, engine.rules, measure(engine.decide, engine.inputs, samples)))
        big = big_policy()
        big_engine = opsgate_engine(big, big_requests(count), "opsgate, 1,000 rules")
        rows.append(
            (
                big_engine.name,
                big_engine.rules,
                measure(big_engine.decide, big_engine.inputs, fast_samples),
            )
        )

    cedar = next((t for name, _, t in rows if name == "cedarpy"), None)
    print_table(rows, cedar, skipped)

    ours = rows[0][2]
    thousand = rows[-1][2]
    checks = [
        (f"opsgate p50 <= {TARGET_P50_US:g} µs", ours.p50_us <= TARGET_P50_US),
        (
            f"opsgate 1,000 rules p50 <= {TARGET_P50_1000_US:g} µs",
            thousand.p50_us <= TARGET_P50_1000_US,
        ),
    ]
    if cedar is not None:
        checks.append(
            (
                f"opsgate >= {TARGET_SPEEDUP:g}× faster than cedarpy (p50)",
                cedar.p50_us / ours.p50_us >= TARGET_SPEEDUP,
            )
        )
    for label, ok in checks:
        print(f"{'ok  ' if ok else 'MISS'} {label}")
    return 1 if args.strict and not all(ok for _, ok in checks) else 0


if __name__ == "__main__":
    sys.exit(main())
