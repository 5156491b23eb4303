"""Migration classification as data (tests/data/migration_cases.yaml), plus the
properties that hold for every input: classify never raises, anything it cannot
parse is destructive, and what runs is exactly the statements it classified.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import example, given, settings
from hypothesis import strategies as st

from opsgate.operations.migrate import CODES, classify

CASES_FILE = Path(__file__).parent.parent / "data" / "migration_cases.yaml"
CASES: list[dict[str, Any]] = yaml.safe_load(CASES_FILE.read_text())["cases"]


def check_case(case: dict[str, Any]) -> None:
    analysis = classify(case["sql"], case["dialect"])
    codes = sorted({f.code for s in analysis.statements for f in s.findings})
    assert codes == sorted(set(case["codes"])), (case["name"], codes)
    assert analysis.destructive is case["destructive"], (case["name"], codes)
    assert analysis.transactional is case.get("transactional", True), case["name"]
    errors = sorted({f.code for _, f in analysis.errors})
    assert errors == sorted(case.get("errors", [])), (case["name"], errors)


def test_there_are_at_least_thirty_cases_on_both_dialects() -> None:
    assert len(CASES) >= 30
    assert {c["dialect"] for c in CASES} == {"postgresql", "sqlite"}
    assert len({c["name"] for c in CASES}) == len(CASES)
    for case in CASES:
        assert set(case["codes"]) <= set(CODES), case["name"]


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_classification_case(case: dict[str, Any]) -> None:
    check_case(case)


def test_a_wrong_expectation_fails_the_runner() -> None:
    case = next(c for c in CASES if c["name"] == "drop table")
    with pytest.raises(AssertionError):
        check_case({**case, "destructive": False})
    with pytest.raises(AssertionError):
        check_case({**case, "codes": ["DS101"]})


def test_statements_are_the_exact_text_that_runs() -> None:
    sql = "CREATE TABLE a (x text);\nINSERT INTO a VALUES ('1;2');\n-- tail\n"
    for dialect in ("postgresql", "sqlite"):
        statements = classify(sql, dialect).statements
        assert [s.sql.rstrip(";") for s in statements] == [
            "CREATE TABLE a (x text)",
            "INSERT INTO a VALUES ('1;2')",
        ]
        assert [s.index for s in statements] == [1, 2]


def test_every_destructive_code_marks_the_statement_destructive() -> None:
    analysis = classify("DROP TABLE a; CREATE TABLE b (id int)", "postgresql")
    first, second = analysis.statements
    assert first.destructive and first.codes == ("DS102",)
    assert not second.destructive and second.findings == ()
    assert first.to_dict()["findings"][0]["code"] == "DS102"


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200), st.sampled_from(["postgresql", "sqlite"]))
@example("\x00;", "sqlite")  # SQLite's statement splitter refuses NUL
@example("SELECT 1;\x00", "sqlite")
@example("{:", "sqlite")  # sqlglot raised AttributeError on it
def test_any_text_classifies_without_raising_and_unparsed_is_destructive(
    text: str, dialect: str
) -> None:
    analysis = classify(text, dialect)  # type: ignore[arg-type]
    for statement in analysis.statements:
        if statement.kind in ("unparsed", "Command"):
            assert statement.destructive
        assert statement.sql.strip()


_FRAGMENTS = st.sampled_from(
    [
        "DROP TABLE t",
        "DELETE FROM t",
        "CREATE TABLE t (id int)",
        "SELECT 1",
        "'; DROP TABLE x; '",
        "$$;$$",
        "-- ;\n",
        "/* ; */",
        "WITH d AS (DELETE FROM t RETURNING *) SELECT 1",
        "BEGIN",
        ";",
        "TRUNCATE t",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_FRAGMENTS, max_size=8), st.sampled_from(["postgresql", "sqlite"]))
def test_a_destructive_fragment_is_never_lost_in_a_mix(parts: list[str], dialect: str) -> None:
    """Whatever surrounds it, a file containing a DROP/DELETE/TRUNCATE of a table it did
    not create is destructive (or needs review, which is destructive too)."""
    text = ";\n".join(parts)
    analysis = classify(text, dialect)  # type: ignore[arg-type]
    alone = [p for p in parts if p in ("DROP TABLE t", "DELETE FROM t", "TRUNCATE t")]
    created_first = "CREATE TABLE t (id int)" in parts and parts.index(
        "CREATE TABLE t (id int)"
    ) < min((parts.index(p) for p in alone), default=len(parts))
    if alone and not created_first:
        assert analysis.destructive, text
