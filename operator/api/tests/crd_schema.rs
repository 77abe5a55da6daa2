//! The generated CRD is what the API server enforces: check its shape here, before any
//! cluster sees it (rejection by a real API server is proven in the cluster tests).

use kube::CustomResourceExt;
use rbee_api::{Backend, RbeeWorker, RestartMode};
use serde::Deserialize;
use serde_json::Value;

fn crd() -> Value {
    serde_json::to_value(RbeeWorker::crd()).expect("CRD serialises")
}

fn version(crd: &Value) -> &Value {
    &crd["spec"]["versions"][0]
}

fn schema(crd: &Value) -> &Value {
    &version(crd)["schema"]["openAPIV3Schema"]
}

fn spec_schema(crd: &Value) -> &Value {
    &schema(crd)["properties"]["spec"]
}

/// Walks every sub-schema with its JSON path.
fn walk<'a>(path: String, node: &'a Value, visit: &mut dyn FnMut(&str, &'a Value)) {
    visit(&path, node);
    if let Some(props) = node.get("properties").and_then(Value::as_object) {
        for (name, child) in props {
            walk(format!("{path}.{name}"), child, visit);
        }
    }
    if let Some(items) = node.get("items") {
        walk(format!("{path}[]"), items, visit);
    }
    if let Some(extra) = node.get("additionalProperties").filter(|v| v.is_object()) {
        walk(format!("{path}{{}}"), extra, visit);
    }
}

#[test]
fn names_and_scope() {
    let crd = crd();
    assert_eq!(crd["metadata"]["name"], "rbeeworkers.rbee.dev");
    assert_eq!(crd["spec"]["group"], "rbee.dev");
    assert_eq!(crd["spec"]["scope"], "Namespaced");
    let names = &crd["spec"]["names"];
    assert_eq!(names["kind"], "RbeeWorker");
    assert_eq!(names["plural"], "rbeeworkers");
    assert_eq!(names["shortNames"], serde_json::json!(["rbw"]));
    assert_eq!(version(&crd)["name"], "v1alpha1");
    assert!(version(&crd)["subresources"]["status"].is_object(), "status subresource");
}

#[test]
fn schema_is_structural() {
    let crd = crd();
    let mut problems = Vec::new();
    walk("".into(), schema(&crd), &mut |path, node| {
        let typed = node.get("type").is_some()
            || node.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
        if !typed {
            problems.push(format!("{path}: no type"));
        }
        if node.get("x-kubernetes-preserve-unknown-fields").is_some() {
            problems.push(format!("{path}: preserves unknown fields"));
        }
        for forbidden in ["$ref", "oneOf", "anyOf", "allOf", "not"] {
            if node.get(forbidden).is_some() && !path.ends_with("{}") {
                // Structural schemas may use these only as pure value validations.
                let has_types = node[forbidden]
                    .as_array()
                    .is_some_and(|alts| alts.iter().any(|a| a.get("type").is_some()));
                if forbidden == "$ref" || has_types {
                    problems.push(format!("{path}: {forbidden} with types"));
                }
            }
        }
    });
    assert!(problems.is_empty(), "non-structural schema:\n{}", problems.join("\n"));
}

#[test]
fn every_spec_field_is_documented() {
    let crd = crd();
    let mut undocumented = Vec::new();
    walk("spec".into(), spec_schema(&crd), &mut |path, node| {
        // Embedded core types (affinity, tolerations, resources) carry upstream docs.
        let own = !["affinity", "tolerations", "resources"].iter().any(|t| {
            path.starts_with(&format!("spec.{t}.")) || path.starts_with(&format!("spec.{t}["))
        });
        if own && node.get("description").is_none() && path != "spec" && !path.ends_with("{}") {
            undocumented.push(path.to_string());
        }
    });
    assert!(undocumented.is_empty(), "fields without docs: {undocumented:?}");
}

#[test]
fn printer_columns() {
    let crd = crd();
    let cols = version(&crd)["additionalPrinterColumns"].as_array().expect("columns").clone();
    let get = |name: &str| {
        cols.iter().find(|c| c["name"] == name).unwrap_or_else(|| panic!("no column {name}"))
    };
    for (name, ty) in [
        ("Phase", "string"),
        ("Backend", "string"),
        ("Model", "string"),
        ("Ready", "string"),
        ("VRAM", "string"),
        ("Restarts", "integer"),
        ("Heartbeat", "date"),
        ("Age", "date"),
    ] {
        assert_eq!(get(name)["type"], ty, "column {name}");
        assert!(get(name).get("priority").is_none_or(|p| p == 0), "{name} shown by default");
    }
    for name in ["Reason", "Node", "Device"] {
        assert_eq!(get(name)["priority"], 1, "{name} only with -o wide");
    }
    assert_eq!(get("Heartbeat")["jsonPath"], ".status.heartbeat.lastHeartbeatTime");
    assert_eq!(get("VRAM")["jsonPath"], ".status.vram.summary");
    let order: Vec<_> = cols.iter().filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(
        order,
        [
            "Phase",
            "Backend",
            "Model",
            "Ready",
            "VRAM",
            "Restarts",
            "Heartbeat",
            "Age",
            "Reason",
            "Node",
            "Device"
        ]
    );
}

#[test]
fn defaults_are_explicit_in_the_schema() {
    let crd = crd();
    let spec = spec_schema(&crd);
    let p = |path: &[&str]| {
        let mut node = spec;
        for seg in path {
            node = &node["properties"][*seg];
        }
        node.get("default").cloned()
    };
    assert_eq!(p(&["backend"]), Some("cuda".into()));
    assert_eq!(p(&["heartbeat", "intervalSeconds"]), Some(30.into()));
    assert_eq!(p(&["restartPolicy", "mode"]), Some("Always".into()));
    assert_eq!(p(&["restartPolicy", "maxRestarts"]), Some(5.into()));
    assert_eq!(p(&["restartPolicy", "backoff", "initialSeconds"]), Some(10.into()));
    assert_eq!(p(&["restartPolicy", "backoff", "maxSeconds"]), Some(300.into()));
    assert_eq!(p(&["restartPolicy", "backoff", "jitterPercent"]), Some(20.into()));
    assert_eq!(p(&["model", "format"]), Some("gguf".into()));
    // Parent objects default too, so the API server fills nested defaults for a minimal manifest.
    assert!(p(&["heartbeat"]).is_some());
    assert!(p(&["restartPolicy"]).is_some());
}

#[test]
fn minimal_manifest_gets_defaults() {
    let w: RbeeWorker = serde_yaml::from_str(
        "apiVersion: rbee.dev/v1alpha1\nkind: RbeeWorker\nmetadata: {name: w}\nspec:\n  model: {path: /models/m.gguf}\n",
    )
    .expect("minimal manifest parses");
    assert_eq!(w.spec.backend, Backend::Cuda);
    assert_eq!(w.spec.heartbeat.interval_seconds, 30);
    assert_eq!(w.spec.heartbeat.effective_stale_after_seconds(), 60);
    assert_eq!(w.spec.restart_policy.mode, RestartMode::Always);
    assert_eq!(w.spec.restart_policy.backoff.initial_seconds, 10);
    assert_eq!(w.spec.restart_policy.backoff.max_seconds, 300);
    assert_eq!(w.spec.restart_policy.max_restarts, 5);
    assert_eq!(w.spec.model.served_name(), "m");
}

fn rules(node: &Value) -> Vec<(String, String)> {
    node.get("x-kubernetes-validations")
        .and_then(Value::as_array)
        .map(|rs| {
            rs.iter()
                .map(|r| {
                    (
                        r["rule"].as_str().unwrap_or_default().to_string(),
                        r["message"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn validation_rules_are_present() {
    let crd = crd();
    let spec = spec_schema(&crd);
    let props = &spec["properties"];

    let cel = |node: &Value, needle: &str| {
        let found = rules(node);
        assert!(
            found.iter().any(|(rule, msg)| rule.contains(needle) && !msg.is_empty()),
            "no CEL rule containing {needle:?} in {found:?}"
        );
    };
    cel(spec, "self.gpus > 0");
    cel(&props["heartbeat"], "self.staleAfterSeconds > self.intervalSeconds");
    cel(&props["restartPolicy"]["properties"]["backoff"], "self.maxSeconds >= self.initialSeconds");
    cel(&props["model"], "self.path.startsWith('/')");

    let hb = &props["heartbeat"]["properties"];
    let min = |node: &Value| node["minimum"].as_f64();
    assert_eq!(min(&hb["intervalSeconds"]), Some(1.0));
    assert_eq!(min(&props["gpus"]), Some(0.0));
    assert_eq!(props["model"]["properties"]["path"]["minLength"], 1);
    assert_eq!(min(&props["limits"]["properties"]["vramBytes"]), Some(0.0));
    assert_eq!(min(&props["limits"]["properties"]["minFreeDiskBytes"]), Some(0.0));
    assert_eq!(props["backend"]["enum"], serde_json::json!(["cuda", "cpu"]));
    assert_eq!(
        props["restartPolicy"]["properties"]["mode"]["enum"],
        serde_json::json!(["Never", "OnFailure", "Always"])
    );
    assert_eq!(props["model"]["properties"]["sha256"]["pattern"], "^[0-9a-f]{64}$");
    let required = props["model"]["required"].as_array().expect("model.required");
    assert!(required.contains(&"path".into()));
    assert!(spec["required"].as_array().is_some_and(|r| r.contains(&"model".into())));
}

#[test]
fn conditions_are_a_list_map_keyed_by_type() {
    let crd = crd();
    let conds = &schema(&crd)["properties"]["status"]["properties"]["conditions"];
    assert_eq!(conds["x-kubernetes-list-type"], "map");
    assert_eq!(conds["x-kubernetes-list-map-keys"], serde_json::json!(["type"]));
}

#[test]
fn examples_are_valid_workers() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).expect("examples/ exists") {
        let path = entry.expect("dir entry").path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let text = std::fs::read_to_string(&path).expect("readable example");
            for doc in serde_yaml::Deserializer::from_str(&text) {
                let value = serde_yaml::Value::deserialize(doc).expect("yaml");
                if value["kind"] == "RbeeWorker" {
                    let w: Result<RbeeWorker, _> = serde_yaml::from_value(value);
                    assert!(w.is_ok(), "{}: {:?}", path.display(), w.err());
                    seen += 1;
                }
            }
        }
    }
    assert!(seen >= 2, "expected a CPU and a CUDA example, found {seen}");
}
