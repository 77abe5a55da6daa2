"""Worker benchmarks beyond worker-image/scripts/bench: concurrent streams and start time.

Concurrent streams: S streaming completions at once against one llm-worker-rbee process;
aggregate output tokens/s (peer: the same worker with one stream, same run) and the p99 gap
between output tokens. Start: process start to /health 200, against reading the weights
file cold (evicted from the page cache with posix_fadvise) in the same run.
Standard library only. Asserts nothing.
"""
import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

PROMPT = ("Write a long story about a lighthouse keeper who finds a message in a bottle. "
          "Describe the sea, the weather, the lighthouse and the keeper's life in detail.\n\n")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_worker(args, port):
    return subprocess.Popen([args.bin, "--model", args.gguf, "--bind-address", f"127.0.0.1:{port}",
                             "--threads", str(args.threads)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_health(url, proc, timeout=300, every=0.01):
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if proc.poll() is not None:
            sys.exit("worker.py: worker exited before it was ready")
        try:
            with urllib.request.urlopen(url + "/health", timeout=5) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        time.sleep(every)
    sys.exit("worker.py: worker not ready in time")


def stream_completion(url, max_tokens):
    """One streaming completion: (status, arrival times of text chunks, completion tokens)."""
    body = json.dumps({"model": "m", "prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0,
                       "stream": True, "stream_options": {"include_usage": True}}).encode()
    req = urllib.request.Request(url + "/v1/completions", data=body,
                                 headers={"Content-Type": "application/json"})
    t0 = time.perf_counter()
    times, tokens = [], None
    try:
        with urllib.request.urlopen(req, timeout=600) as r:
            for raw in r:
                line = raw.decode().strip()
                if not line.startswith("data:") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[5:])
                if chunk.get("choices") and chunk["choices"][0].get("text"):
                    times.append(time.perf_counter())
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
    except urllib.error.HTTPError as e:
        return e.code, t0, [], 0
    return 200, t0, times, tokens if tokens is not None else len(times)


def concurrent_streams(args, url, streams):
    results = [None] * streams

    def one(i):
        results[i] = stream_completion(url, args.max_tokens)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(streams)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ok = [r for r in results if r[0] == 200 and r[2]]
    end = max((r[2][-1] for r in ok), default=t0)
    tokens = sum(r[3] for r in ok)
    gaps = sorted(b - a for r in ok for a, b in zip(r[2], r[2][1:]))
    tpot = [(r[2][-1] - r[2][0]) / (r[3] - 1) for r in ok if r[3] > 1]
    p99 = gaps[min(len(gaps) - 1, int(len(gaps) * 0.99))] if gaps else None
    return {
        "streams": streams, "completed": len(ok), "rejected": {str(r[0]): 1 for r in results if r[0] != 200},
        "completion_tokens": tokens, "wall_s": end - t0,
        "output_tokens_per_s": tokens / (end - t0) if end > t0 else None,
        "ttft_p50_s": statistics.median(r[2][0] - r[1] for r in ok) if ok else None,
        "tpot_median_s": statistics.median(tpot) if tpot else None,
        "inter_token_p99_s": p99,
    }


def evict(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def read_file(path):
    t0 = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while f.read(8 << 20):
            pass
    return time.perf_counter() - t0


def start_times(args):
    cold_reads, warm_reads, starts_cold, starts_warm = [], [], [], []
    for _ in range(args.start_runs):
        evict(args.gguf)
        cold_reads.append(read_file(args.gguf))
        warm_reads.append(read_file(args.gguf))
        for evicted, out in ((True, starts_cold), (False, starts_warm)):
            if evicted:
                evict(args.gguf)
            port = free_port()
            t0 = time.perf_counter()
            proc = start_worker(args, port)
            try:
                wait_health(f"http://127.0.0.1:{port}", proc)
                out.append(time.perf_counter() - t0)
            finally:
                proc.terminate()
                proc.wait()
    med = statistics.median
    return {
        "runs": args.start_runs, "weights_bytes": os.path.getsize(args.gguf),
        "cold_read_s": med(cold_reads), "warm_read_s": med(warm_reads),
        "start_to_ready_cold_s": med(starts_cold), "start_to_ready_warm_s": med(starts_warm),
        "start_cold_over_cold_read": med(starts_cold) / med(cold_reads),
        "all": {"cold_read_s": cold_reads, "warm_read_s": warm_reads,
                "start_to_ready_cold_s": starts_cold, "start_to_ready_warm_s": starts_warm},
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True, help="llm-worker-rbee binary")
    ap.add_argument("--gguf", required=True, help="weights")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--streams", default="1,4,8", help="concurrent stream counts, comma separated")
    ap.add_argument("--max-tokens", type=int, default=64, help="output tokens per stream")
    ap.add_argument("--start-runs", type=int, default=3)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_worker(args, port)
    try:
        wait_health(url, proc, every=0.2)
        stream_completion(url, 8)  # warm-up
        conc = []
        for s in (int(x) for x in args.streams.split(",")):
            r = concurrent_streams(args, url, s)
            print(f"worker.py: {s} streams: {r}", file=sys.stderr)
            conc.append(r)
    finally:
        proc.terminate()
        proc.wait()
    base = conc[0]["output_tokens_per_s"] if conc and conc[0]["streams"] == 1 else None
    for r in conc:
        r["throughput_over_one_stream"] = (r["output_tokens_per_s"] / base
                                           if base and r["output_tokens_per_s"] else None)
    start = start_times(args)
    print(f"worker.py: start: {start}", file=sys.stderr)
    result = {"threads": args.threads, "max_tokens": args.max_tokens, "model": os.path.basename(args.gguf),
              "concurrent_streams": conc, "start": start}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
