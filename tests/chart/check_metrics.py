#!/usr/bin/env python3
"""Checks that every metric the alerts and the Grafana dashboard query is one the operator or
the worker exports, i.e. is listed in charts/rbee-operator/metrics.txt.

usage: check_metrics.py METRICS_TXT RULES_YAML DASHBOARD_JSON...

RULES_YAML is the PrometheusRule's spec (groups). PromQL is reduced to metric names by
dropping strings, label matchers, grouping clauses, ranges, functions, keywords, numbers and
Grafana variables; what is left must be a listed family (histograms may add _bucket, _sum,
_count).
"""
import json
import re
import sys

import yaml

KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool",
            "and", "or", "unless", "inf", "nan"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def metric_names(expr):
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)              # string literals
    expr = re.sub(r"\{[^}]*\}", "", expr)                         # label matchers
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)                        # ranges
    expr = re.sub(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?", " ", expr)   # Grafana variables
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        word = m.group(0)
        rest = expr[m.end():].lstrip()
        if rest.startswith("(") or word.lower() in KEYWORDS:      # function or keyword
            continue
        if re.fullmatch(r"\d+\w*", word):
            continue
        names.add(word)
    return names


def known(name, families):
    if name in families:
        return True
    return any(name.endswith(s) and name[: -len(s)] in families for s in HISTOGRAM_SUFFIXES)


def dashboard_exprs(node):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "expr" and isinstance(v, str):
                yield v
            elif k == "query" and isinstance(v, str):
                yield from label_values_metric(v)
            else:
                yield from dashboard_exprs(v)
    elif isinstance(node, list):
        for v in node:
            yield from dashboard_exprs(v)


def label_values_metric(query):
    m = re.match(r"\s*label_values\((.*),\s*\w+\)\s*$", query)
    if m:
        yield m.group(1)


def main():
    args = sys.argv[1:]
    if not args or args[0] in ("--help", "-h") or len(args) < 3:
        print(__doc__.strip())
        return 0 if args and args[0] in ("--help", "-h") else 2
    families = {line.strip() for line in open(args[0])
                if line.strip() and not line.lstrip().startswith("#")}
    sources = []
    rules = yaml.safe_load(open(args[1]))
    for g in rules["groups"]:
        for r in g["rules"]:
            sources.append((f"alert {r.get('alert') or r.get('record')}", r["expr"]))
    for path in args[2:]:
        for expr in dashboard_exprs(json.load(open(path))):
            sources.append((path, expr))
    bad, used = [], set()
    for where, expr in sources:
        for name in metric_names(expr):
            if known(name, families):
                used.add(name)
            else:
                bad.append(f"{where}: {name!r} is not in {args[0]} (in: {expr})")
    if bad:
        print("unknown metrics:", *bad, sep="\n  - ", file=sys.stderr)
        return 1
    base = {n for n in families if any(known(u, {n}) for u in used)}
    print(f"{len(sources)} expressions use {len(base)} of {len(families)} listed metric families; "
          f"none unlisted")
    unused = sorted(families - base)
    if unused:
        print("  listed but not shown anywhere:", ", ".join(unused))
    return 0


if __name__ == "__main__":
    sys.exit(main())
