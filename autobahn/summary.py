#!/usr/bin/env python3
"""Summarises an Autobahn|Testsuite report (reports/<side>/index.json).

Prints the count of each verdict and the ids of every case that is not OK, and exits
nonzero if a case is not OK unless autobahn/expected.txt lists it (with a reason).
Usage: summary.py REPORT_DIR SIDE [EXPECTATIONS_FILE]  (SIDE: server, client, tokio-server ...)
"""
import fnmatch
import json
import os
import sys

# Cases that carry no verdict in the suite itself.
INFORMATIONAL_OK = {"INFORMATIONAL"}


def case_key(case_id):
    return tuple(int(p) for p in case_id.split("."))


def load_expectations(path):
    """Lines: PATTERN BEHAVIOR reason...  (# comments). Returns [(pattern, behavior, reason)]."""
    out = []
    if not path or not os.path.exists(path):
        return out
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split(None, 3)
            if len(parts) < 4:
                sys.exit("%s:%d: need SIDE PATTERN BEHAVIOR REASON" % (path, n))
            out.append(tuple(parts))
    return out


def main():
    report_dir, side = sys.argv[1], sys.argv[2]
    # tokio-server, hyper-server ... are checked against the server expectations.
    kind = "client" if side.endswith("client") else "server"
    expectations = load_expectations(sys.argv[3] if len(sys.argv) > 3 else None)
    with open(os.path.join(report_dir, "index.json")) as f:
        index = json.load(f)
    if not index:
        sys.exit("no agent in %s/index.json" % report_dir)
    bad = 0
    for agent, cases in sorted(index.items()):
        counts = {}
        unexpected, expected = [], []
        for case_id in sorted(cases, key=case_key):
            r = cases[case_id]
            verdict = r["behavior"]
            close = r.get("behaviorClose", "OK")
            counts[verdict] = counts.get(verdict, 0) + 1
            if verdict == "OK" and close in ("OK", "INFORMATIONAL"):
                continue
            if verdict in INFORMATIONAL_OK:
                continue
            allowed = [e for e in expectations if e[0] in (kind, "both") and fnmatch.fnmatch(case_id, e[1]) and e[2] == verdict]
            (expected if allowed else unexpected).append("%s %s/%s (%d ms)" % (case_id, verdict, close, r.get("duration", 0)))
        total = sum(counts.values())
        order = ["OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "WRONG CODE", "UNCLEAN", "FAILED"]
        parts = ["%s %d" % (k, counts[k]) for k in order if k in counts]
        parts += ["%s %d" % (k, v) for k, v in counts.items() if k not in order]
        print("%s (%s): %d cases: %s" % (side, agent, total, ", ".join(parts)))
        if expected:
            print("  expected (autobahn/expected.txt): %d, e.g. %s" % (len(expected), expected[0]))
        for u in unexpected:
            print("  NOT OK: " + u)
        bad += len(unexpected)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
