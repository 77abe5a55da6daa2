//! The real API server rejects bad RbeeWorker manifests at `kubectl apply`, naming the field,
//! and accepts every example.

use rbee_testkit::{TempNamespace, client, kubectl, kubectl_with_stdin};

/// (case, spec YAML indented under `spec:`, text the error must contain)
const INVALID: &[(&str, &str, &str)] = &[
    (
        "negative interval",
        "model: {path: /m.gguf}\n  heartbeat: {intervalSeconds: -1}",
        "spec.heartbeat.intervalSeconds",
    ),
    (
        "zero interval",
        "model: {path: /m.gguf}\n  heartbeat: {intervalSeconds: 0}",
        "spec.heartbeat.intervalSeconds",
    ),
    (
        "staleAfter equal to interval",
        "model: {path: /m.gguf}\n  heartbeat: {intervalSeconds: 10, staleAfterSeconds: 10}",
        "staleAfterSeconds",
    ),
    (
        "staleAfter below interval",
        "model: {path: /m.gguf}\n  heartbeat: {intervalSeconds: 10, staleAfterSeconds: 5}",
        "staleAfterSeconds",
    ),
    ("unknown backend", "model: {path: /m.gguf}\n  backend: rocm", "spec.backend"),
    ("cuda with 0 gpus", "model: {path: /m.gguf}\n  backend: cuda\n  gpus: 0", "spec.gpus"),
    ("negative gpus", "model: {path: /m.gguf}\n  backend: cpu\n  gpus: -1", "spec.gpus"),
    ("empty model path", "model: {path: \"\"}", "spec.model.path"),
    ("missing model", "backend: cpu", "spec.model"),
    ("relative path without pvc", "model: {path: models/m.gguf}", "spec.model.path"),
    (
        "negative VRAM limit",
        "model: {path: /m.gguf}\n  limits: {vramBytes: -1}",
        "spec.limits.vramBytes",
    ),
    (
        "negative min free disk",
        "model: {path: /m.gguf}\n  limits: {minFreeDiskBytes: -5}",
        "spec.limits.minFreeDiskBytes",
    ),
    (
        "backoff max below initial",
        "model: {path: /m.gguf}\n  restartPolicy: {backoff: {initialSeconds: 60, maxSeconds: 30}}",
        "maxSeconds",
    ),
    (
        "jitter above 100%",
        "model: {path: /m.gguf}\n  restartPolicy: {backoff: {jitterPercent: 150}}",
        "spec.restartPolicy.backoff.jitterPercent",
    ),
    (
        "unknown restart mode",
        "model: {path: /m.gguf}\n  restartPolicy: {mode: Sometimes}",
        "spec.restartPolicy.mode",
    ),
    (
        "negative maxRestarts",
        "model: {path: /m.gguf}\n  restartPolicy: {maxRestarts: -1}",
        "spec.restartPolicy.maxRestarts",
    ),
    ("bad sha256", "model: {path: /m.gguf, sha256: xyz}", "spec.model.sha256"),
    ("unknown model format", "model: {path: /m.gguf, format: onnx}", "spec.model.format"),
    ("unknown field", "model: {path: /m.gguf}\n  modle: {path: /x}", "spec.modle"),
    (
        "negative drain timeout",
        "model: {path: /m.gguf}\n  restartPolicy: {drainTimeoutSeconds: -1}",
        "spec.restartPolicy.drainTimeoutSeconds",
    ),
];

#[tokio::test]
async fn api_server_rejects_names_a_service_cannot_carry() -> anyhow::Result<()> {
    let client = client().await?;
    let ns = TempNamespace::create(&client, "names", &[]).await?;
    let mut failures = Vec::new();
    for name in ["7b-worker".to_string(), format!("w{}", "x".repeat(63))] {
        let manifest = format!(
            "apiVersion: rbee.dev/v1alpha1\nkind: RbeeWorker\nmetadata: {{name: {name}}}\nspec: {{backend: cpu, model: {{path: /m.gguf}}}}\n"
        );
        let out = kubectl_with_stdin(&["apply", "-n", &ns.name, "-f", "-"], Some(&manifest))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() || !stderr.contains("metadata.name must be") {
            failures.push(format!("{name}: {stderr}"));
        }
    }
    ns.delete().await?;
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

#[tokio::test]
async fn api_server_rejects_invalid_manifests_naming_the_field() -> anyhow::Result<()> {
    let client = client().await?;
    let ns = TempNamespace::create(&client, "validation", &[]).await?;
    let mut failures = Vec::new();
    for (i, (case, spec, field)) in INVALID.iter().enumerate() {
        let manifest = format!(
            "apiVersion: rbee.dev/v1alpha1\nkind: RbeeWorker\nmetadata: {{name: bad-{i}}}\nspec:\n  {spec}\n"
        );
        let out = kubectl_with_stdin(&["apply", "-n", &ns.name, "-f", "-"], Some(&manifest))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            failures.push(format!("{case}: accepted\n{manifest}"));
        } else if !stderr.contains(field) {
            failures.push(format!("{case}: error does not name {field}: {stderr}"));
        }
    }
    ns.delete().await?;
    assert!(
        failures.is_empty(),
        "{} of {} cases wrong:\n{}",
        failures.len(),
        INVALID.len(),
        failures.join("\n")
    );
    Ok(())
}

#[tokio::test]
async fn api_server_accepts_every_example_and_applies_defaults() -> anyhow::Result<()> {
    let client = client().await?;
    let ns = TempNamespace::create(&client, "examples", &[]).await?;
    let examples = rbee_testkit::repo_root().join("examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&examples)? {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let out =
            kubectl(&["apply", "--dry-run=server", "-n", &ns.name, "-f", &path.to_string_lossy()])?;
        assert!(
            out.status.success(),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        seen += 1;
    }
    assert!(seen >= 2);

    // A minimal manifest comes back from the API server with the schema's defaults.
    let minimal = "apiVersion: rbee.dev/v1alpha1\nkind: RbeeWorker\nmetadata: {name: minimal}\nspec:\n  model: {path: /m.gguf}\n";
    let out = kubectl_with_stdin(
        &["create", "--dry-run=server", "-n", &ns.name, "-o", "json", "-f", "-"],
        Some(minimal),
    )?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let w: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(w["spec"]["backend"], "cuda");
    assert_eq!(w["spec"]["heartbeat"]["intervalSeconds"], 30);
    assert_eq!(w["spec"]["restartPolicy"]["backoff"]["initialSeconds"], 10);
    assert_eq!(w["spec"]["restartPolicy"]["maxRestarts"], 5);
    ns.delete().await?;
    Ok(())
}
