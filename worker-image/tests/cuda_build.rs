//! The cuda build (`scripts/cargo-cuda build --release`) on a machine without an NVIDIA
//! driver: `--backend cuda` fails at once, naming the driver, and says so in a heartbeat;
//! `--backend cpu` serves as the cpu build does. Plus `--verify-against-cpu` and the generated
//! test models gpu-check uses.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::TempDir;
use serde_json::{Value, json};

/// The cuda build: `RBEE_CUDA_WORKER_BIN`, else target/cuda/release; `None` (the test says
/// why it does nothing) when it was not built.
fn cuda_worker() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("RBEE_CUDA_WORKER_BIN") {
        assert!(Path::new(&p).exists(), "RBEE_CUDA_WORKER_BIN={p} does not exist");
        return Some(PathBuf::from(p));
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/cuda/release/llm-worker-rbee");
    if p.exists() {
        return Some(p);
    }
    eprintln!("no cuda build: run worker-image/scripts/cargo-cuda build --release to test it");
    None
}

fn driver_present() -> bool {
    Path::new("/dev/nvidiactl").exists()
        || Command::new("ldconfig")
            .arg("-p")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("libcuda.so.1"))
}

/// Writes a generated GGUF with rbee-gen-model; returns its path.
fn gen_model(dir: &Path, format: &str) -> PathBuf {
    let path = dir.join(format!("check-{format}.gguf"));
    let out = Command::new(env!("CARGO_BIN_EXE_rbee-gen-model"))
        .args(["--shape", "check", "--seed", "3", "--format", format, "--out"])
        .arg(&path)
        .output()
        .expect("run rbee-gen-model");
    assert!(out.status.success(), "rbee-gen-model: {}", String::from_utf8_lossy(&out.stderr));
    let summary: Value = serde_json::from_slice(&out.stdout).expect("summary JSON");
    assert_eq!(summary["format"], format, "{summary}");
    path
}

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// Serves `binary --backend cpu` on `model`; returns the process and its URL once healthy.
async fn serve_cpu(binary: &Path, model: &Path) -> (Proc, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let child = Command::new(binary)
        .args(["--backend", "cpu", "--bind-address", &addr, "--model"])
        .arg(model)
        .stderr(Stdio::null())
        .spawn()
        .expect("start worker");
    let proc = Proc(child);
    let url = format!("http://{addr}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(r) = reqwest::get(format!("{url}/health")).await
            && r.status() == 200
        {
            return (proc, url);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{} did not become healthy within 60 s", binary.display());
}

async fn greedy(url: &str, prompt: &str) -> Value {
    let body = json!({"prompt": prompt, "max_tokens": 24, "temperature": 0});
    let resp = reqwest::Client::new()
        .post(format!("{url}/v1/completions"))
        .json(&body)
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    resp.json().await.expect("JSON")
}

/// Heartbeats POSTed to a local listener, as the operator would receive them.
async fn heartbeat_sink() -> (String, Arc<Mutex<Vec<Value>>>) {
    let beats = Arc::new(Mutex::new(Vec::new()));
    let store = beats.clone();
    let app = axum::Router::new().route(
        "/v1/heartbeat",
        axum::routing::post(move |axum::Json(beat): axum::Json<Value>| {
            let store = store.clone();
            async move {
                store.lock().expect("lock").push(beat);
                axum::Json(json!({}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/v1/heartbeat", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, beats)
}

/// Runs `bin --backend cuda` with heartbeats to a local sink until it exits (at most 20 s);
/// returns its stderr and the heartbeats it sent.
async fn run_cuda_backend(bin: &Path) -> (String, Vec<Value>) {
    let dir = TempDir::new("nodriver");
    let model = gen_model(dir.path(), "q8_0");
    let token = dir.path().join("token");
    std::fs::write(&token, "t").expect("token");
    let (url, beats) = heartbeat_sink().await;
    let started = Instant::now();
    let mut child = Command::new(bin)
        .args(["--backend", "cuda", "--bind-address", "127.0.0.1:0", "--heartbeat-url", &url])
        .args(["--heartbeat-interval-seconds", "1", "--worker-namespace", "ns"])
        .args(["--worker-name", "w", "--pod-name", "w-worker", "--pod-uid", "u-1"])
        .arg("--heartbeat-token-path")
        .arg(&token)
        .arg("--model")
        .arg(&model)
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the worker");
    let deadline = started + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "--backend cuda still runs after 20 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().expect("stderr"), &mut stderr)
        .expect("read stderr");
    assert!(!status.success(), "exit status {status}; {stderr}");
    let beats = beats.lock().expect("lock").clone();
    (stderr, beats)
}

/// The one heartbeat of a worker that could not start: state error, naming `why`.
fn assert_error_heartbeat(beats: &[Value], why: &str, stderr: &str) {
    let beat = beats.first().unwrap_or_else(|| panic!("no heartbeat was sent; {stderr}"));
    assert_eq!(beat["state"], "error", "{beat}");
    assert_eq!(beat["health"], "degraded", "{beat}");
    assert_eq!(beat["backend"], "cuda", "{beat}");
    let reason = beat["healthReason"].as_str().unwrap_or_default();
    assert!(reason.contains(why) && reason.contains("--backend cpu"), "{beat}");
}

#[tokio::test(flavor = "multi_thread")]
async fn cuda_backend_without_a_driver_exits_and_reports_the_missing_driver() {
    let Some(bin) = cuda_worker() else { return };
    if driver_present() {
        eprintln!("an NVIDIA driver is present here: the no-driver behaviour cannot be observed");
        return;
    }
    let (stderr, beats) = run_cuda_backend(&bin).await;
    assert!(stderr.contains("no NVIDIA driver") && stderr.contains("libcuda.so.1"), "{stderr}");
    assert_error_heartbeat(&beats, "no NVIDIA driver", &stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn cpu_build_asked_for_cuda_exits_and_reports_why() {
    let bin = Path::new(env!("CARGO_BIN_EXE_llm-worker-rbee"));
    if cfg!(feature = "cuda") {
        return;
    }
    let (stderr, beats) = run_cuda_backend(bin).await;
    assert!(stderr.contains("built without CUDA support"), "{stderr}");
    assert_error_heartbeat(&beats, "built without CUDA support", &stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn cpu_backend_of_the_cuda_build_serves_as_the_cpu_build_does() {
    let Some(cuda_bin) = cuda_worker() else { return };
    let dir = TempDir::new("cudacpu");
    for format in ["q4_1", "q4_k"] {
        let model = gen_model(dir.path(), format);
        let (_cuda, cuda_url) = serve_cpu(&cuda_bin, &model).await;
        let (_cpu, cpu_url) =
            serve_cpu(Path::new(env!("CARGO_BIN_EXE_llm-worker-rbee")), &model).await;
        let (a, b) = (greedy(&cuda_url, "lighthouse").await, greedy(&cpu_url, "lighthouse").await);
        assert_eq!(a["choices"], b["choices"], "{format}: cuda build {a} vs cpu build {b}");
        assert_eq!(a["usage"]["completion_tokens"], 24, "{a}");
    }
}

#[test]
fn verify_against_cpu_reports_equal_tokens_on_the_cpu() {
    let dir = TempDir::new("parity");
    let model = gen_model(dir.path(), "q4_0");
    let out = Command::new(env!("CARGO_BIN_EXE_llm-worker-rbee"))
        .args(["--backend", "cpu", "--verify-against-cpu", "6", "--model"])
        .arg(&model)
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).expect("report JSON");
    assert_eq!(report["device"], "cpu");
    assert_eq!(report["tokens_equal"], true, "{report}");
    assert_eq!(report["max_abs_logit_diff"], 0.0, "{report}");
    // The generated model continues token t with t+1: after the prompt 0..24, 24, 25, ...
    assert_eq!(report["cpu_tokens"], json!([24, 25, 26, 27, 28, 29]), "{report}");
}
