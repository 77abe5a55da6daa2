//! The heartbeat parser never panics, whatever the bytes, and accepts exactly what validates.
//! Bounded property runs here; `PROPTEST_CASES` raises the count for longer fuzzing.

use proptest::prelude::*;
use rbee_api::heartbeat::{Heartbeat, InvalidHeartbeat};

fn valid() -> serde_json::Value {
    serde_json::json!({
        "version": 1,
        "worker": {"namespace": "ns", "name": "w", "podName": "w-worker", "podUid": "u"},
        "sequence": 7, "sentAt": "2026-11-27T10:00:00Z", "health": "healthy", "state": "ready",
        "loadProgressPercent": 100, "backend": "cuda",
        "device": {"index": 0, "uuid": "GPU-1", "name": "NVIDIA H100"},
        "vram": {"usedBytes": 10, "totalBytes": 20},
        "memoryRssBytes": 5, "diskFreeBytes": 6, "inFlightRequests": 0
    })
}

#[test]
fn the_documented_example_parses() {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/heartbeat.md"))
            .expect("docs/heartbeat.md");
    let start = doc.find("```json").expect("a json block") + "```json".len();
    let end = start + doc[start..].find("```").expect("closed block");
    let hb = Heartbeat::parse(&doc.as_bytes()[start..end]);
    assert!(hb.is_ok(), "{hb:?}");
}

#[test]
fn out_of_range_fields_are_named() {
    let cases: [(&str, serde_json::Value, &str); 5] = [
        ("/loadProgressPercent", 101.into(), "loadProgressPercent"),
        ("/vram/usedBytes", 21.into(), "vram.usedBytes"),
        ("/version", 2.into(), "version"),
        ("/sequence", 0.into(), "sequence"),
        ("/worker/podUid", "".into(), "worker.podUid"),
    ];
    for (pointer, value, field) in cases {
        let mut v = valid();
        *v.pointer_mut(pointer).expect("pointer") = value;
        match Heartbeat::parse(v.to_string().as_bytes()) {
            Err(InvalidHeartbeat::OutOfRange { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{pointer}: {other:?}"),
        }
    }
    for (pointer, value) in
        [("/memoryRssBytes", serde_json::json!(-1)), ("/state", "dancing".into())]
    {
        let mut v = valid();
        *v.pointer_mut(pointer).expect("pointer") = value;
        assert!(
            matches!(
                Heartbeat::parse(v.to_string().as_bytes()),
                Err(InvalidHeartbeat::Malformed(_))
            ),
            "{pointer}"
        );
    }
}

fn mutate(
    mut v: serde_json::Value,
    path: Vec<String>,
    new: serde_json::Value,
) -> serde_json::Value {
    let mut node = &mut v;
    for key in &path {
        match node.get_mut(key.as_str()) {
            Some(next) => node = next,
            None => return v,
        }
    }
    *node = new;
    v
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        ".{0,12}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map(".{0,6}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = Heartbeat::parse(&bytes);
    }

    #[test]
    fn mutated_payloads_are_accepted_only_when_valid(
        path in prop::sample::select(vec![
            vec!["version"], vec!["sequence"], vec!["state"], vec!["health"], vec!["loadProgressPercent"],
            vec!["vram", "usedBytes"], vec!["vram", "totalBytes"], vec!["vram"], vec!["memoryRssBytes"],
            vec!["worker", "podUid"], vec!["worker"], vec!["sentAt"], vec!["backend"], vec!["device", "index"],
        ]),
        value in json_value(),
    ) {
        let v = mutate(valid(), path.iter().map(|s| s.to_string()).collect(), value);
        if let Ok(hb) = Heartbeat::parse(v.to_string().as_bytes()) {
            prop_assert!(hb.load_progress_percent <= 100);
            prop_assert!(hb.vram.is_none_or(|v| v.used_bytes <= v.total_bytes));
            prop_assert!(hb.sequence >= 1);
            prop_assert_eq!(hb.version, 1);
        }
    }
}
