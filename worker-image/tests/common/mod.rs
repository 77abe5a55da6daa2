//! Helpers shared by the integration tests: an in-process worker, a tiny random Llama
//! written at test time, and the real SmolLM2 GGUF.
#![allow(dead_code)]

pub mod convert;
pub mod requant;
pub mod tiny;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use llm_worker_rbee::EngineStatus;
use llm_worker_rbee::engine::{EngineConfig, EngineHandle, EngineRunner, engine};
use llm_worker_rbee::metrics::Metrics;
use llm_worker_rbee::model::LoadOptions;
use rbee_api::worker::Backend;

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "rbee-test-{tag}-{}-{:x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A worker served in-process on 127.0.0.1 with a random port.
pub struct TestWorker {
    pub url: String,
    pub engine: EngineHandle,
    pub status: Arc<EngineStatus>,
    runner: Option<(EngineRunner, LoadOptions)>,
}

impl TestWorker {
    /// Serves HTTP at once; the model is not loaded until [`TestWorker::load`].
    pub async fn start_unloaded(opts: LoadOptions, config: EngineConfig) -> Self {
        let status = EngineStatus::new(Backend::Cpu, "cpu");
        let metrics = Metrics::new("cpu", "cpu");
        let (handle, runner) = engine(config, status.clone(), metrics);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let app = llm_worker_rbee::api::router(handle.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, engine: handle, status, runner: Some((runner, opts)) }
    }

    /// Serves and loads, returning once the model is ready.
    pub async fn start(opts: LoadOptions, config: EngineConfig) -> Self {
        let mut w = Self::start_unloaded(opts, config).await;
        w.load();
        w.wait_ready().await;
        w
    }

    /// Starts loading the model on the engine thread.
    pub fn load(&mut self) {
        if let Some((runner, opts)) = self.runner.take() {
            runner.spawn(opts, candle_core::Device::Cpu).expect("spawn engine");
        }
    }

    /// Waits until the model is loaded (panics on a load error or after 120 s).
    pub async fn wait_ready(&self) {
        for _ in 0..1200 {
            if let Some(e) = self.status.load_error() {
                panic!("model failed to load: {e}");
            }
            if self.status.model().is_some() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("model did not load within 120 s");
    }

    pub fn client() -> reqwest::Client {
        reqwest::Client::new()
    }

    /// POSTs JSON; returns status and body JSON.
    pub async fn post(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        let resp = Self::client()
            .post(format!("{}{path}", self.url))
            .json(&body)
            .send()
            .await
            .expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)))
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        let resp = Self::client().get(format!("{}{path}", self.url)).send().await.expect("request");
        (resp.status().as_u16(), resp.text().await.expect("body"))
    }

    /// Streams a request; returns the parsed `data:` chunks (without `[DONE]`) and whether
    /// `[DONE]` ended the stream.
    pub async fn stream(
        &self,
        path: &str,
        body: serde_json::Value,
    ) -> (Vec<serde_json::Value>, bool) {
        let (status, text) = {
            let resp = Self::client()
                .post(format!("{}{path}", self.url))
                .json(&body)
                .send()
                .await
                .expect("request");
            (resp.status().as_u16(), resp.text().await.expect("body"))
        };
        assert_eq!(status, 200, "stream failed: {text}");
        let mut chunks = Vec::new();
        let mut done = false;
        for line in text.lines() {
            let Some(data) = line.strip_prefix("data: ") else { continue };
            if data == "[DONE]" {
                done = true;
            } else {
                chunks.push(serde_json::from_str(data).expect("chunk is JSON"));
            }
        }
        (chunks, done)
    }
}

/// Text of the streamed chat chunks.
pub fn chat_stream_text(chunks: &[serde_json::Value]) -> String {
    chunks
        .iter()
        .filter_map(|c| {
            c["choices"].get(0)?.get("delta")?.get("content")?.as_str().map(str::to_string)
        })
        .collect()
}

pub fn default_config() -> EngineConfig {
    EngineConfig { max_queue: 64, max_batch: 8 }
}

pub fn options(path: &Path) -> LoadOptions {
    LoadOptions {
        model_path: path.to_path_buf(),
        tokenizer_path: None,
        model_name: None,
        sha256: None,
        context_length: None,
        cpu_kernels: Default::default(),
    }
}

/// The SmolLM2 GGUF: `RBEE_TEST_GGUF`, or what `scripts/fetch-model` prints.
pub fn smollm2_gguf() -> PathBuf {
    if let Ok(p) = std::env::var("RBEE_TEST_GGUF") {
        return PathBuf::from(p);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/fetch-model");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("run scripts/fetch-model");
    assert!(out.status.success(), "scripts/fetch-model failed; set RBEE_TEST_GGUF");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// The committed llama.cpp reference.
pub fn llamacpp_fixture() -> serde_json::Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smollm2-llamacpp.json");
    let text = std::fs::read_to_string(&p).expect("read fixture");
    serde_json::from_str(&text).expect("fixture JSON")
}
