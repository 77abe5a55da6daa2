//! The Helm chart against the real API server: `helm install` with every switch on passes
//! restricted Pod Security admission, `helm upgrade` applies changed values, `helm uninstall`
//! removes the release but keeps the CRD and the RbeeWorkers in it, and a misspelt value fails
//! `helm install` naming the key.
//!
//! The CRD is cluster-wide and shared with the tests running beside these: every install here
//! uses `crds.enabled=false` except the keep test, which only ever installs with
//! `crds.keep=true`, so nothing here deletes the CRD.

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::ListParams;
use rbee_testkit::{
    TempNamespace, client, eventually, kubectl, kubectl_with_stdin, repo_root, testenv, wait_for,
};

const CRD: &str = "rbeeworkers.rbee.dev";
const TIMEOUT: Duration = Duration::from_secs(60);
const RESTRICTED: &[(&str, &str)] = &[
    ("pod-security.kubernetes.io/enforce", "restricted"),
    ("pod-security.kubernetes.io/warn", "restricted"),
];

fn chart() -> PathBuf {
    repo_root().join("charts/rbee-operator")
}

fn all_on_values() -> PathBuf {
    repo_root().join("tests/chart/values-all-on.yaml")
}

/// Runs the testenv's helm against the testenv's API server.
fn helm(args: &[&str]) -> anyhow::Result<Output> {
    let env = testenv()?;
    std::process::Command::new(env.bin_dir.join("helm"))
        .args(args)
        .env("KUBECONFIG", &env.kubeconfig)
        .output()
        .context("running helm")
}

fn text(out: &Output) -> String {
    format!(
        "exit: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs helm and fails with everything it printed unless it succeeded.
fn helm_ok(args: &[&str]) -> anyhow::Result<Output> {
    let out = helm(args)?;
    ensure!(out.status.success(), "helm {} failed:\n{}", args.join(" "), text(&out));
    Ok(out)
}

fn kubectl_ok(args: &[&str]) -> anyhow::Result<String> {
    let out = kubectl(args)?;
    ensure!(out.status.success(), "kubectl {} failed:\n{}", args.join(" "), text(&out));
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether `kubectl get KIND NAME` finds the object.
fn exists(ns: &str, kind: &str, name: &str) -> anyhow::Result<bool> {
    let out = kubectl(&["get", kind, name, "-n", ns, "-o", "name", "--ignore-not-found"])?;
    ensure!(out.status.success(), "kubectl get {kind} {name} failed:\n{}", text(&out));
    Ok(!out.stdout.is_empty())
}

/// Polls until the object is gone, e.g. after helm uninstall.
async fn wait_gone(ns: &str, kind: &str, name: &str) -> anyhow::Result<()> {
    eventually(TIMEOUT, &format!("{kind} {name} to be deleted"), || async move {
        match exists(ns, kind, name) {
            Ok(false) => Ok(()),
            Ok(true) => Err(format!("{kind} {name} still exists")),
            Err(e) => Err(format!("{e:#}")),
        }
    })
    .await
}

/// The release's full name: the chart's fullname helper gives `<release>-rbee-operator`.
fn fullname(release: &str) -> String {
    format!("{release}-rbee-operator")
}

#[tokio::test]
async fn install_with_every_switch_on_then_upgrade_then_uninstall() -> anyhow::Result<()> {
    let client = client().await?;
    let ns = TempNamespace::create(&client, "chart", RESTRICTED).await?;
    let result = install_upgrade_uninstall(&client, &ns.name).await;
    let _ = helm(&["uninstall", &ns.name, "-n", &ns.name]);
    ns.delete().await?;
    result
}

async fn install_upgrade_uninstall(client: &kube::Client, ns: &str) -> anyhow::Result<()> {
    let release = ns;
    let name = fullname(release);
    let values = all_on_values();
    let install = helm_ok(&[
        "install",
        release,
        &chart().to_string_lossy(),
        "-n",
        ns,
        "-f",
        &values.to_string_lossy(),
        "--set",
        "crds.enabled=false",
    ])?;
    let printed = text(&install);
    ensure!(
        !printed.contains("violate PodSecurity"),
        "the Deployment's pod template violates restricted Pod Security:\n{printed}"
    );
    ensure!(
        printed.contains("kubectl get rbeeworkers"),
        "NOTES do not tell the user how to watch workers:\n{printed}"
    );

    for (kind, object) in [
        ("deployment", name.clone()),
        ("serviceaccount", name.clone()),
        ("service", format!("{name}-metrics")),
        ("service", format!("{name}-heartbeat")),
        ("role", format!("{name}-leader-election")),
        ("rolebinding", format!("{name}-leader-election")),
        ("clusterrole", name.clone()),
        ("clusterrolebinding", name.clone()),
        ("servicemonitor", name.clone()),
        ("podmonitor", format!("{name}-workers")),
        ("prometheusrule", name.clone()),
        ("configmap", format!("{name}-dashboard")),
        ("networkpolicy", name.clone()),
        ("poddisruptionbudget", name.clone()),
    ] {
        ensure!(exists(ns, kind, &object)?, "helm install did not create {kind} {object}");
    }

    // Restricted admission is enforced on pods, not on the Deployment: the ReplicaSet's pods
    // exist only if the API server admitted them.
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let selector = format!("app.kubernetes.io/instance={release}");
    eventually(TIMEOUT, "2 operator pods admitted under restricted Pod Security", || {
        let pods = pods.clone();
        let selector = selector.clone();
        async move {
            let list = pods.list(&ListParams::default().labels(&selector)).await;
            match list {
                Ok(l) if l.items.len() == 2 => Ok(()),
                Ok(l) => Err(format!(
                    "{} pods; ReplicaSets: {}",
                    l.items.len(),
                    kubectl(&["get", "rs,events", "-n", ns, "-o", "wide"])
                        .map(|o| text(&o))
                        .unwrap_or_default()
                )),
                Err(e) => Err(e.to_string()),
            }
        }
    })
    .await?;

    helm_ok(&[
        "upgrade",
        release,
        &chart().to_string_lossy(),
        "-n",
        ns,
        "--reuse-values",
        "--set",
        "operator.replicas=1",
        "--set",
        "monitoring.serviceMonitor.interval=15s",
    ])?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    wait_for(&deployments, &name, TIMEOUT, "scaled to 1 replica by helm upgrade", |d| {
        d.spec.as_ref().and_then(|s| s.replicas) == Some(1)
    })
    .await?;
    let interval = kubectl_ok(&[
        "get",
        "servicemonitor",
        &name,
        "-n",
        ns,
        "-o",
        "jsonpath={.spec.endpoints[0].interval}",
    ])?;
    ensure!(interval == "15s", "ServiceMonitor interval after upgrade: {interval:?}, want 15s");
    // A PodDisruptionBudget with minAvailable 1 would block every drain of a single replica.
    wait_gone(ns, "poddisruptionbudget", &name).await?;

    let uninstall = helm_ok(&["uninstall", release, "-n", ns])?;
    println!("{}", text(&uninstall));
    for (kind, object) in [
        ("deployment", name.clone()),
        ("service", format!("{name}-heartbeat")),
        ("prometheusrule", name.clone()),
        ("clusterrole", name.clone()),
        ("clusterrolebinding", name.clone()),
    ] {
        wait_gone(ns, kind, &object).await?;
    }
    let status = helm(&["status", release, "-n", ns])?;
    ensure!(!status.status.success(), "helm status still finds the release:\n{}", text(&status));
    Ok(())
}

#[tokio::test]
async fn misspelt_value_fails_install_naming_the_key() -> anyhow::Result<()> {
    let client = client().await?;
    let ns = TempNamespace::create(&client, "chart-typo", RESTRICTED).await?;
    let result = misspelt_value(&ns.name);
    let _ = helm(&["uninstall", &ns.name, "-n", &ns.name]);
    ns.delete().await?;
    result
}

fn misspelt_value(ns: &str) -> anyhow::Result<()> {
    let values = std::env::temp_dir().join(format!("{ns}-values.yaml"));
    std::fs::write(
        &values,
        "crds:\n  enabled: false\nmonitoring:\n  serviceMonitor:\n    enabled: true\n    intervall: 15s\n",
    )?;
    let out = helm(&[
        "install",
        ns,
        &chart().to_string_lossy(),
        "-n",
        ns,
        "-f",
        &values.to_string_lossy(),
    ]);
    let _ = std::fs::remove_file(&values);
    let out = out?;
    let printed = text(&out);
    ensure!(!out.status.success(), "helm install accepted a misspelt key:\n{printed}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        stderr.contains("intervall") && stderr.contains("/monitoring/serviceMonitor"),
        "the error does not name the misspelt key monitoring.serviceMonitor.intervall:\n{printed}"
    );
    let list = helm_ok(&["list", "-n", ns, "-q"])?;
    ensure!(
        list.stdout.trim_ascii().is_empty(),
        "a failed install left a release:\n{}",
        text(&list)
    );
    Ok(())
}

#[tokio::test]
async fn crd_and_workers_survive_uninstall_with_crds_keep() -> anyhow::Result<()> {
    let client = client().await?;
    let ns = TempNamespace::create(&client, "chart-keep", RESTRICTED).await?;
    let result = keep_crd(&ns.name).await;
    let _ = helm(&["uninstall", &ns.name, "-n", &ns.name]);
    release_crd_from_helm();
    ns.delete().await?;
    result
}

/// testenv applies crds/ before any test runs, so the chart must adopt the CRD: helm takes
/// over an existing object only when it carries the release's ownership metadata.
fn adopt_crd(release: &str, ns: &str) -> anyhow::Result<()> {
    if !exists("default", "crd", CRD)? {
        return Ok(());
    }
    kubectl_ok(&["label", "crd", CRD, "app.kubernetes.io/managed-by=Helm", "--overwrite"])?;
    kubectl_ok(&[
        "annotate",
        "crd",
        CRD,
        &format!("meta.helm.sh/release-name={release}"),
        &format!("meta.helm.sh/release-namespace={ns}"),
        "--overwrite",
    ])?;
    Ok(())
}

/// Drops the chart's labels and ownership metadata again, so the CRD looks as testenv applied
/// it and does not point at a release that is gone.
fn release_crd_from_helm() {
    let _ = kubectl(&[
        "label",
        "crd",
        CRD,
        "app.kubernetes.io/managed-by-",
        "app.kubernetes.io/instance-",
        "app.kubernetes.io/name-",
        "app.kubernetes.io/part-of-",
        "app.kubernetes.io/version-",
        "helm.sh/chart-",
    ]);
    let _ = kubectl(&[
        "annotate",
        "crd",
        CRD,
        "meta.helm.sh/release-name-",
        "meta.helm.sh/release-namespace-",
        "helm.sh/resource-policy-",
    ]);
}

async fn keep_crd(ns: &str) -> anyhow::Result<()> {
    let release = ns;
    // A stale copy would make helm rewrite (or conflict on) the CRD every other test uses.
    let sync = std::process::Command::new(repo_root().join("tests/chart/sync-crd"))
        .arg("--check")
        .output()?;
    ensure!(sync.status.success(), "the chart's CRD is stale:\n{}", text(&sync));
    adopt_crd(release, ns)?;
    // crds.keep is the default; set it anyway: this test must never delete the shared CRD.
    helm_ok(&[
        "install",
        release,
        &chart().to_string_lossy(),
        "-n",
        ns,
        "--set",
        "crds.enabled=true",
        "--set",
        "crds.keep=true",
    ])?;
    let policy = kubectl_ok(&[
        "get",
        "crd",
        CRD,
        "-o",
        "jsonpath={.metadata.annotations.helm\\.sh/resource-policy}",
    ])?;
    ensure!(policy == "keep", "CRD resource policy after install: {policy:?}, want keep");

    let example = std::fs::read_to_string(repo_root().join("examples/cpu-worker.yaml"))?;
    let applied = kubectl_with_stdin(&["apply", "-n", ns, "-f", "-"], Some(&example))?;
    ensure!(applied.status.success(), "applying examples/cpu-worker.yaml:\n{}", text(&applied));

    let uninstall = helm_ok(&["uninstall", release, "-n", ns])?;
    let printed = text(&uninstall);
    ensure!(
        printed.contains(CRD),
        "helm uninstall does not tell the user it kept the CRD:\n{printed}"
    );
    wait_gone(ns, "deployment", &fullname(release)).await?;

    ensure!(exists("default", "crd", CRD)?, "helm uninstall deleted the CRD:\n{printed}");
    let worker = kubectl_ok(&["get", "rbeeworker", "smollm2-cpu", "-n", ns, "-o", "name"]);
    match worker {
        Ok(name) if name.trim() == "rbeeworker.rbee.dev/smollm2-cpu" => Ok(()),
        Ok(name) => bail!("unexpected object after uninstall: {name}"),
        Err(e) => bail!("the RbeeWorker did not survive helm uninstall: {e:#}\n{printed}"),
    }
}
