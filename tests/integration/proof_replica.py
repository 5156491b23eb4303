"""A replica in its own process: opens the gate on the shared database and authorizes
each request read from stdin (token, capability, proof, now) with its own clock (the
`now` given). Prints the decision effect or the refusal code of each, as JSON."""

from __future__ import annotations

import json
import sys

import opsgate


def main() -> None:
    state_dir, url = sys.argv[1], sys.argv[2]
    requests = json.load(sys.stdin)
    results = []
    with opsgate.Gate.open(state_dir, database_url=url, require_proof=True) as gate:
        for r in requests:
            try:
                decision = gate.authorize(
                    r["token"], r["capability"], proof=r["proof"], now=r["now"]
                )
                results.append(decision.effect)
            except opsgate.OpsgateError as exc:
                results.append(exc.code)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
