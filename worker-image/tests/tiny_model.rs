//! Tests on a tiny random Llama written at test time (safetensors path, HTTP API, errors).

mod common;

use common::{TempDir, TestWorker, chat_stream_text, default_config, options, tiny};
use llm_worker_rbee::engine::EngineConfig;
use llm_worker_rbee::model::{self, LoadOptions};
use serde_json::json;

fn tiny_model(seed: u64) -> TempDir {
    let dir = TempDir::new("tiny");
    tiny::write_tiny_llama(dir.path(), seed);
    dir
}

fn chat(content: &str, extra: serde_json::Value) -> serde_json::Value {
    let mut body = json!({
        "model": "tiny",
        "messages": [{"role": "user", "content": content}],
        "temperature": 0,
        "max_tokens": 12,
    });
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    body
}

#[tokio::test(flavor = "multi_thread")]
async fn greedy_is_deterministic_and_stream_equals_non_stream() {
    let dir = tiny_model(7);
    let w = TestWorker::start(options(dir.path()), default_config()).await;
    let (s1, a) = w.post("/v1/chat/completions", chat("hello", json!({}))).await;
    let (s2, b) = w.post("/v1/chat/completions", chat("hello", json!({}))).await;
    assert_eq!((s1, s2), (200, 200), "{a} {b}");
    let text = a["choices"][0]["message"]["content"].as_str().expect("content");
    assert_eq!(a["choices"][0]["message"], b["choices"][0]["message"]);
    assert_eq!(a["usage"]["completion_tokens"], 12);
    assert_eq!(a["choices"][0]["finish_reason"], "length");
    let (chunks, done) = w
        .stream(
            "/v1/chat/completions",
            chat("hello", json!({"stream": true, "stream_options": {"include_usage": true}})),
        )
        .await;
    assert!(done, "stream must end with [DONE]");
    assert_eq!(chat_stream_text(&chunks), text);
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let last = chunks.last().expect("chunks");
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["completion_tokens"], 12);
    let finish = &chunks[chunks.len() - 2]["choices"][0]["finish_reason"];
    assert_eq!(finish, "length");
}

#[tokio::test(flavor = "multi_thread")]
async fn completions_and_models() {
    let dir = tiny_model(3);
    let w = TestWorker::start(options(dir.path()), default_config()).await;
    let (status, body) = w
        .post("/v1/completions", json!({"prompt": "abc", "max_tokens": 5, "temperature": 0}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "text_completion");
    assert_eq!(body["usage"]["prompt_tokens"], 3);
    let (chunks, done) = w
        .stream(
            "/v1/completions",
            json!({"prompt": "abc", "max_tokens": 5, "temperature": 0, "stream": true}),
        )
        .await;
    assert!(done);
    let streamed: String = chunks.iter().filter_map(|c| c["choices"][0]["text"].as_str()).collect();
    assert_eq!(streamed, body["choices"][0]["text"].as_str().unwrap_or_default());
    let (status, models) = w.get("/v1/models").await;
    assert_eq!(status, 200);
    assert!(models.contains("\"object\":\"list\""), "{models}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_get_status_and_error_json() {
    let dir = tiny_model(5);
    let w = TestWorker::start(options(dir.path()), default_config()).await;
    let long = "x".repeat(tiny::CONTEXT + 10);
    let cases = [
        (chat("hi", json!({"bogus_field": 1})), 422, "invalid_request_body"),
        (chat("hi", json!({"max_tokens": -3})), 400, "invalid_request"),
        (chat("hi", json!({"temperature": 7})), 400, "invalid_request"),
        (chat("hi", json!({"n": 2})), 400, "invalid_request"),
        (chat(&long, json!({"max_tokens": null})), 400, "context_length_exceeded"),
        (chat("hi", json!({"max_tokens": 10_000})), 400, "context_length_exceeded"),
        (json!({"messages": "not a list"}), 422, "invalid_request_body"),
        (json!({"model": "m", "messages": []}), 400, "invalid_request"),
    ];
    for (body, status, code) in cases {
        let (got, err) = w.post("/v1/chat/completions", body.clone()).await;
        assert_eq!(got, status, "{body} -> {err}");
        assert_eq!(err["error"]["code"], code, "{err}");
        assert!(err["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{err}");
        assert!(err["error"]["type"].is_string(), "{err}");
    }
    let resp = TestWorker::client()
        .post(format!("{}/v1/completions", w.url))
        .body("{not json")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 400);
    let (metrics_status, metrics) = w.get("/metrics").await;
    assert_eq!(metrics_status, 200);
    assert!(
        metrics.contains(
            "rbee_worker_requests_total{backend=\"cpu\",device=\"cpu\",outcome=\"rejected\"}"
        ),
        "{metrics}"
    );
    assert!(metrics.contains("rbee_worker_inference_errors_total{backend=\"cpu\",device=\"cpu\",code=\"context_length_exceeded\"} 2"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread")]
async fn full_queue_answers_429() {
    let dir = tiny_model(5);
    let config = EngineConfig { max_queue: 0, max_batch: 1 };
    let w = TestWorker::start(options(dir.path()), config).await;
    let (status, err) = w.post("/v1/chat/completions", chat("hi", json!({}))).await;
    assert_eq!(status, 429, "{err}");
    assert_eq!(err["error"]["type"], "rate_limit_error");
}

#[tokio::test(flavor = "multi_thread")]
async fn health_is_503_while_loading_and_200_after() {
    let dir = tiny_model(9);
    let mut w = TestWorker::start_unloaded(options(dir.path()), default_config()).await;
    let (status, body) = w.get("/health").await;
    assert_eq!(status, 503, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["state"], "loading");
    assert_eq!(v["loadProgressPercent"], 0);
    assert!(v["reason"].as_str().is_some_and(|r| r.contains("loading")));
    let (status, err) = w.post("/v1/chat/completions", chat("hi", json!({}))).await;
    assert_eq!(status, 503, "{err}");
    assert_eq!(err["error"]["code"], "model_loading");
    w.load();
    w.wait_ready().await;
    let (status, body) = w.get("/health").await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["state"], "ready");
    assert_eq!(v["loadProgressPercent"], 100);
    assert_eq!(w.status.load_progress_percent(), 100);
    assert_eq!(w.status.in_flight(), 0);
    let (_, metrics) = w.get("/metrics").await;
    assert!(
        metrics.contains("rbee_worker_model_loaded{backend=\"cpu\",device=\"cpu\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_load_is_503_with_the_reason() {
    let dir = TempDir::new("missing");
    let mut w =
        TestWorker::start_unloaded(options(&dir.path().join("nope.gguf")), default_config()).await;
    w.load();
    for _ in 0..100 {
        if w.status.load_error().is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (status, body) = w.get("/health").await;
    assert_eq!(status, 503);
    assert!(body.contains("nope.gguf") && body.contains("\"state\":\"error\""), "{body}");
}

fn load_error(opts: &LoadOptions) -> String {
    match model::load(opts, &candle_core::Device::Cpu, &|_| {}) {
        Ok(_) => panic!("loading {} should fail", opts.model_path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn load_errors_name_the_file() {
    let dir = TempDir::new("errors");
    let missing = dir.path().join("missing.gguf");
    let e = load_error(&options(&missing));
    assert!(e.contains("missing.gguf"), "{e}");

    let wrong = dir.path().join("wrong.gguf");
    std::fs::write(&wrong, b"PK\x03\x04 this is a zip file").expect("write");
    let e = load_error(&options(&wrong));
    assert!(e.contains("wrong.gguf") && e.contains("not a GGUF file"), "{e}");

    let empty_dir = dir.path().join("emptydir");
    std::fs::create_dir_all(&empty_dir).expect("mkdir");
    let e = load_error(&options(&empty_dir));
    assert!(e.contains("config.json"), "{e}");

    let tiny = tiny_model(1);
    let weights = tiny.path().join("model.safetensors");
    let bytes = std::fs::read(&weights).expect("read");
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).expect("truncate");
    let e = load_error(&options(tiny.path()));
    assert!(e.contains("model.safetensors"), "{e}");
}

#[test]
fn sha256_mismatch_is_refused() {
    let dir = TempDir::new("sha");
    let f = dir.path().join("m.gguf");
    std::fs::write(&f, b"GGUF....").expect("write");
    let mut opts = options(&f);
    opts.sha256 = Some("0".repeat(64));
    let e = load_error(&opts);
    assert!(e.contains("sha256 mismatch") && e.contains("m.gguf"), "{e}");
}

#[test]
fn cuda_backend_in_cpu_build_fails_clearly() {
    if cfg!(feature = "cuda") {
        return;
    }
    match model::device_for(rbee_api::worker::Backend::Cuda, 0) {
        Ok(_) => panic!("cuda must fail in a CPU-only build"),
        Err(e) => assert!(e.to_string().contains("without CUDA support"), "{e}"),
    }
}

#[test]
fn incremental_decoding_never_splits_a_character() {
    let dir = tiny_model(2);
    let tok = tokenizers::Tokenizer::from_file(dir.path().join("tokenizer.json")).expect("tok");
    let text = "héllo 🙂 日本";
    let ids = tok.encode(text, false).expect("encode").get_ids().to_vec();
    assert!(ids.len() > text.chars().count(), "byte-level tokens split characters");
    let mut dec = llm_worker_rbee::tokenizer::IncrementalDecoder::default();
    let mut out = String::new();
    for id in ids {
        if let Some(delta) = dec.push(&tok, id).expect("push") {
            assert!(!delta.contains('\u{FFFD}'), "delta {delta:?} has a broken character");
            out.push_str(&delta);
        }
    }
    out.push_str(&dec.flush(&tok).expect("flush"));
    assert_eq!(out, text);
}
