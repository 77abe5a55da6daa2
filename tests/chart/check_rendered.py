#!/usr/bin/env python3
"""Checks what `helm template` rendered for charts/rbee-operator (called by tests/chart/check).

usage: check_rendered.py DEFAULT.yaml ALL_ON.yaml NAMESPACED.yaml
       check_rendered.py --extract-rules ALL_ON.yaml   (prints the PrometheusRule's spec for promtool)

DEFAULT is rendered with the default values, ALL_ON with tests/chart/values-all-on.yaml, and
NAMESPACED with that plus scope.namespaced=true, scope.watchNamespace=llm, release namespace
rbee-system.
"""
import json
import re
import sys

import yaml

# Exactly what the operator uses: (apiGroup, resource, verbs, resourceNames).
CLUSTER_RULES = {
    ("authentication.k8s.io", "tokenreviews", ("create",), ()),
    ("apiextensions.k8s.io", "customresourcedefinitions", ("get",), ("rbeeworkers.rbee.dev",)),
}
WORKER_RULES = {
    ("rbee.dev", "rbeeworkers", ("list", "watch"), ()),
    ("rbee.dev", "rbeeworkers/status", ("patch",), ()),
    ("", "pods", ("create", "delete", "list", "patch", "watch"), ()),
    ("", "pods/status", ("patch",), ()),
    ("", "services", ("create", "list", "patch", "watch"), ()),
    ("discovery.k8s.io", "endpointslices", ("list", "watch"), ()),
    ("events.k8s.io", "events", ("create", "patch"), ()),
}
LEADER_RULES = {
    ("coordination.k8s.io", "leases", ("create", "get", "update"), ()),
    ("", "pods", ("patch",), ()),
}
ALERTS = {
    "RbeeWorkerStale", "RbeeWorkerRestartingFrequently", "RbeeWorkerRestartLimitExceeded",
    "RbeeWorkerVRAMNearLimit", "RbeeWorkerNotReady", "RbeeWorkerBackendMismatch",
    "RbeeOperatorDown",
}
FAILURES = []


def fail(what):
    FAILURES.append(what)


def load(path):
    with open(path) as f:
        text = f.read()
    docs = [d for d in yaml.safe_load_all(text) if d]
    return text, docs


def find(docs, kind, name_suffix=""):
    return [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(name_suffix)]


def one(docs, kind, name_suffix="", where=""):
    found = find(docs, kind, name_suffix)
    if len(found) != 1:
        fail(f"{where}: expected one {kind} *{name_suffix}, found {len(found)}")
        return {}
    return found[0]


def rules_of(obj):
    out = set()
    for r in obj.get("rules", []):
        for group in r.get("apiGroups", []):
            for res in r.get("resources", []):
                out.add((group, res, tuple(sorted(r["verbs"])), tuple(r.get("resourceNames", []))))
    return out


def check_rbac_text(text, where):
    """Every rule has a reason comment on the line above; nothing is a wildcard."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if re.match(r"\s*- apiGroups:", line) and not lines[i - 1].strip().startswith("#"):
            fail(f"{where}: RBAC rule without a reason comment: {line.strip()}")
    for d in yaml.safe_load_all(text):
        if d and d["kind"] in ("Role", "ClusterRole"):
            for r in d.get("rules", []):
                for key in ("apiGroups", "resources", "verbs", "resourceNames"):
                    if "*" in r.get(key, []):
                        fail(f"{where}: wildcard in {d['kind']} {d['metadata']['name']}: {r}")


def check_deployment(docs, where):
    dep = one(docs, "Deployment", where=where)
    if not dep:
        return
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    psc, sc = pod.get("securityContext", {}), c.get("securityContext", {})
    want = {
        "pod runAsNonRoot": psc.get("runAsNonRoot") is True,
        "runAsUser 65532": sc.get("runAsUser", psc.get("runAsUser")) == 65532,
        "allowPrivilegeEscalation false": sc.get("allowPrivilegeEscalation") is False,
        "capabilities drop ALL": sc.get("capabilities", {}).get("drop") == ["ALL"],
        "seccompProfile RuntimeDefault": psc.get("seccompProfile", {}).get("type") == "RuntimeDefault",
        "readOnlyRootFilesystem": sc.get("readOnlyRootFilesystem") is True,
        "liveness /healthz on metrics": c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"},
        "readiness /readyz on metrics": c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"},
        "resources set": bool(c.get("resources", {}).get("requests")),
        "2 replicas": dep["spec"]["replicas"] == 2,
    }
    env = {e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") for e in c["env"]}
    want["env POD_NAME"] = env.get("POD_NAME") == "metadata.name"
    want["env POD_NAMESPACE"] = env.get("POD_NAMESPACE") == "metadata.namespace"
    args = c["args"]
    for prefix in ("--metrics-bind-address=:8080", "--heartbeat-bind-address=:8443",
                   "--leader-elect=true", "--leader-election-namespace=$(POD_NAMESPACE)",
                   "--watch-namespace=", "--default-worker-image=", "--concurrency=",
                   "--status-report-period-seconds=120", "--log-format=json",
                   "--heartbeat-url=http://rbee-rbee-operator-heartbeat.rbee-system.svc:8443/v1/heartbeat"):
        want[f"arg {prefix}"] = any(a.startswith(prefix) for a in args)
    for what, ok in want.items():
        if not ok:
            fail(f"{where}: Deployment: {what} (got {json.dumps(c)[:300]}...)")


def check_services(docs, where):
    hb = one(docs, "Service", "-heartbeat", where)
    if hb and hb["spec"]["selector"].get("rbee.dev/leader") != "true":
        fail(f"{where}: heartbeat Service does not select rbee.dev/leader=true")
    if hb and hb["spec"]["ports"] != [{"name": "heartbeat", "port": 8443, "targetPort": "heartbeat", "protocol": "TCP"}]:
        fail(f"{where}: heartbeat Service ports: {hb['spec']['ports']}")
    m = one(docs, "Service", "-metrics", where)
    if m and m["spec"]["ports"][0]["name"] != "metrics" or m and m["spec"]["ports"][0]["port"] != 8080:
        fail(f"{where}: metrics Service ports: {m['spec']['ports']}")


def check_default(path):
    text, docs = load(path)
    where = "default values"
    check_rbac_text(text, where)
    check_deployment(docs, where)
    check_services(docs, where)
    crd = one(docs, "CustomResourceDefinition", where=where)
    if crd.get("metadata", {}).get("annotations", {}).get("helm.sh/resource-policy") != "keep":
        fail(f"{where}: CRD lacks helm.sh/resource-policy: keep")
    cr = one(docs, "ClusterRole", where=where)
    if cr and rules_of(cr) != CLUSTER_RULES | WORKER_RULES:
        fail(f"{where}: ClusterRole rules differ:\n  extra {rules_of(cr) - CLUSTER_RULES - WORKER_RULES}\n"
             f"  missing {(CLUSTER_RULES | WORKER_RULES) - rules_of(cr)}")
    leader = one(docs, "Role", "-leader-election", where)
    if leader and (rules_of(leader) != LEADER_RULES or leader["metadata"]["namespace"] != "rbee-system"):
        fail(f"{where}: leader-election Role: {rules_of(leader)} in {leader['metadata'].get('namespace')}")
    one(docs, "PodDisruptionBudget", where=where)
    for kind in ("ServiceMonitor", "PodMonitor", "PrometheusRule", "NetworkPolicy", "ConfigMap"):
        if find(docs, kind):
            fail(f"{where}: {kind} rendered although its switch is off by default")


def check_all_on(path):
    text, docs = load(path)
    where = "all switches on"
    check_rbac_text(text, where)
    check_deployment(docs, where)
    sm = one(docs, "ServiceMonitor", where=where)
    if sm:
        ep = sm["spec"]["endpoints"][0]
        if (ep["port"], ep["path"], ep.get("honorLabels")) != ("metrics", "/metrics", True):
            fail(f"{where}: ServiceMonitor endpoint {ep}")
        if sm["metadata"]["labels"].get("release") != "kube-prometheus-stack":
            fail(f"{where}: ServiceMonitor lacks the labels from values")
    pm = one(docs, "PodMonitor", where=where)
    if pm:
        sel = pm["spec"]["selector"]["matchLabels"]
        if sel != {"app.kubernetes.io/name": "llm-worker-rbee", "app.kubernetes.io/managed-by": "rbee-operator"}:
            fail(f"{where}: PodMonitor selector {sel}")
        ep = pm["spec"]["podMetricsEndpoints"][0]
        if (ep["port"], ep["path"]) != ("http", "/metrics"):
            fail(f"{where}: PodMonitor endpoint {ep}")
        if pm["spec"]["namespaceSelector"] != {"any": True}:
            fail(f"{where}: PodMonitor namespaceSelector {pm['spec']['namespaceSelector']}")
    pr = one(docs, "PrometheusRule", where=where)
    seen = set()
    for g in pr.get("spec", {}).get("groups", []):
        for r in g["rules"]:
            seen.add(r["alert"])
            ann, labels = r.get("annotations", {}), r.get("labels", {})
            if not (ann.get("summary") and ann.get("description") and labels.get("severity") and r.get("for")):
                fail(f"{where}: alert {r['alert']} lacks summary, description, severity or for")
    if seen != ALERTS:
        fail(f"{where}: alerts {sorted(seen)} != {sorted(ALERTS)}")
    cm = one(docs, "ConfigMap", "-dashboard", where)
    if cm:
        if cm["metadata"]["labels"].get("grafana_dashboard") != "1":
            fail(f"{where}: dashboard ConfigMap lacks grafana_dashboard: \"1\"")
        dash = json.loads(cm["data"]["rbee-fleet.json"])
        if not dash.get("panels"):
            fail(f"{where}: dashboard has no panels")
    np_ = one(docs, "NetworkPolicy", where=where)
    if np_:
        ports = [[p["port"] for p in rule["ports"]] for rule in np_["spec"]["ingress"]]
        if ports != [["heartbeat"], ["metrics"]]:
            fail(f"{where}: NetworkPolicy ingress ports {ports}")
        hb_from = np_["spec"]["ingress"][0]["from"][0]
        if hb_from["podSelector"] != {"matchLabels": {"app.kubernetes.io/name": "llm-worker-rbee"}}:
            fail(f"{where}: heartbeat ingress not limited to worker pods: {hb_from}")
    one(docs, "PodDisruptionBudget", where=where)


def check_namespaced(path):
    text, docs = load(path)
    where = "scope.namespaced=true"
    check_rbac_text(text, where)
    cr = one(docs, "ClusterRole", where=where)
    if cr and rules_of(cr) != CLUSTER_RULES:
        fail(f"{where}: ClusterRole must hold only the cluster-scoped rules, has {rules_of(cr)}")
    role = one(docs, "Role", "-workers", where)
    if role and (rules_of(role) != WORKER_RULES or role["metadata"]["namespace"] != "llm"):
        fail(f"{where}: workers Role {rules_of(role)} in {role['metadata'].get('namespace')}")
    rb = one(docs, "RoleBinding", "-workers", where)
    if rb and rb["metadata"]["namespace"] != "llm":
        fail(f"{where}: workers RoleBinding in {rb['metadata'].get('namespace')}")
    dep = one(docs, "Deployment", where=where)
    if dep and "--watch-namespace=llm" not in dep["spec"]["template"]["spec"]["containers"][0]["args"]:
        fail(f"{where}: Deployment lacks --watch-namespace=llm")


def main():
    args = sys.argv[1:]
    if args and args[0] in ("--help", "-h"):
        print(__doc__.strip())
        return 0
    if len(args) == 2 and args[0] == "--extract-rules":
        _, docs = load(args[1])
        rules = find(docs, "PrometheusRule")
        if len(rules) != 1:
            sys.exit(f"expected one PrometheusRule in {args[1]}, found {len(rules)}")
        yaml.safe_dump(rules[0]["spec"], sys.stdout, sort_keys=False)
        return 0
    if len(args) != 3:
        sys.exit(__doc__.strip())
    check_default(args[0])
    check_all_on(args[1])
    check_namespaced(args[2])
    if FAILURES:
        print("rendered chart check FAILED:", *FAILURES, sep="\n  - ", file=sys.stderr)
        return 1
    print("rendered chart: Deployment, Services, RBAC (exact rules, reason comments, no wildcards), "
          "monitors, 7 alerts, dashboard, NetworkPolicy, PDB and namespaced scope as expected")
    return 0


if __name__ == "__main__":
    sys.exit(main())
