//! Alerts and dashboards may only query what charts/rbee-operator/metrics.txt lists; the
//! worker exports exactly its worker families.

use std::collections::BTreeSet;
use std::time::Duration;

use llm_worker_rbee::metrics::Metrics;

#[test]
fn exports_exactly_the_documented_worker_families() {
    let m = Metrics::new("cpu", "cpu");
    m.started(Duration::from_millis(1), 5);
    m.first_token(Duration::from_millis(20));
    m.next_token(Duration::from_millis(10));
    m.request_finished("completed", Duration::from_millis(50));
    m.request_rejected("queue_full");
    m.error("internal");
    m.model_loaded(Duration::from_secs(1));
    let text = m.encode();
    let exported: BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            let (name, kind) = (parts.next()?, parts.next()?);
            Some(if kind == "counter" { format!("{name}_total") } else { name.to_string() })
        })
        .collect();
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../charts/rbee-operator/metrics.txt"
    ))
    .expect("charts/rbee-operator/metrics.txt");
    let mut worker_section = false;
    let documented: BTreeSet<String> = doc
        .lines()
        .filter_map(|l| {
            if let Some(c) = l.strip_prefix('#') {
                worker_section = c.trim().starts_with("worker");
                return None;
            }
            (worker_section && !l.trim().is_empty()).then(|| l.trim().to_string())
        })
        .collect();
    assert_eq!(exported, documented);
}
