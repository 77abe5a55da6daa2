"""Benchmark driver for scripts/bench (see `bench --help`)."""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request

MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Write a long story about a lighthouse keeper who finds a message in a bottle. "
                                "Describe the sea, the weather, the lighthouse and the keeper's life in detail."},
]


def wait_ready(url, proc, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit("bench: worker exited before it was ready")
        try:
            if urllib.request.urlopen(url + "/health").status == 200:
                return
        except Exception:
            pass
        time.sleep(0.2)
    sys.exit("bench: worker not ready in time")


LONG_TEXT = ("The lighthouse stood on a rock at the edge of the sea, and every night its keeper climbed "
             "the spiral stairs to light the lamp, watching storms roll in from the west. ")


def long_prompt(llm, n_tokens):
    """A plain-text prompt of exactly `n_tokens` tokens (it tokenizes back to the same ids)."""
    ids = llm.tokenize((LONG_TEXT * (n_tokens // 20 + 2)).encode(), add_bos=False, special=False)[:n_tokens]
    text = llm.detokenize(ids).decode()
    return text, llm.tokenize(text.encode(), add_bos=False, special=False)


def bench_worker(args, prompt_text, long_text):
    import openai
    port = 18181
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([args.bin, "--model", args.gguf, "--bind-address", f"127.0.0.1:{port}",
                             "--threads", str(args.threads)], stderr=subprocess.DEVNULL)
    try:
        wait_ready(url, proc)
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", timeout=600)
        runs = []
        for i in range(args.runs + 1):
            t0 = time.perf_counter()
            first = last = None
            usage = None
            stream = client.completions.create(model="m", prompt=prompt_text, temperature=0,
                                               max_tokens=args.max_tokens, stream=True,
                                               stream_options={"include_usage": True})
            for c in stream:
                if c.choices and c.choices[0].text:
                    now = time.perf_counter()
                    first = first or now
                    last = now
                if c.usage:
                    usage = c.usage
            if i == 0:
                continue  # warm-up
            runs.append(measure(t0, first, last, usage.prompt_tokens, usage.completion_tokens))
        long_runs = []
        for i in range(args.runs + 1 if long_text else 0):
            t0 = time.perf_counter()
            first = None
            usage = None
            stream = client.completions.create(model="m", prompt=long_text, temperature=0, max_tokens=1,
                                               stream=True, stream_options={"include_usage": True})
            for c in stream:
                if c.choices and c.choices[0].text:
                    first = first or time.perf_counter()
                if c.usage:
                    usage = c.usage
            if i > 0:
                long_runs.append(measure_prefill(t0, first or time.perf_counter(), usage.prompt_tokens))
        return runs, long_runs
    finally:
        proc.terminate()
        proc.wait()


def bench_llamacpp(args, prompt_text, long_ids):
    import llama_cpp
    llm = llama_cpp.Llama(model_path=args.gguf, n_ctx=2048, n_threads=args.threads,
                          n_threads_batch=args.threads, verbose=False)
    prompt_ids = llm.tokenize(prompt_text.encode(), add_bos=False, special=True)
    runs = []
    for i in range(args.runs + 1):
        llm.reset()
        t0 = time.perf_counter()
        first = last = None
        n = 0
        for c in llm.create_completion(prompt_ids, temperature=0, top_k=1, max_tokens=args.max_tokens,
                                       stream=True, repeat_penalty=1.0):
            if not c["choices"][0]["text"]:
                continue  # the closing chunk carries only finish_reason
            now = time.perf_counter()
            first = first or now
            last = now
            n += 1
        if i == 0:
            continue
        runs.append(measure(t0, first, last, len(prompt_ids), n))
    long_runs = []
    for i in range(args.runs + 1 if long_ids else 0):
        llm.reset()
        t0 = time.perf_counter()
        first = None
        for c in llm.create_completion(long_ids, temperature=0, top_k=1, max_tokens=1, stream=True,
                                       repeat_penalty=1.0):
            first = first or time.perf_counter()
        if i > 0:
            long_runs.append(measure_prefill(t0, first, len(long_ids)))
    return runs, long_runs, llama_cpp.__version__


def measure(t0, first, last, prompt_tokens, completion_tokens):
    ttft = first - t0
    decode = last - first
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "ttft_s": ttft,
        "prompt_tokens_per_s": prompt_tokens / ttft,
        "generation_tokens_per_s": (completion_tokens - 1) / decode if decode > 0 else None,
    }


def measure_prefill(t0, first, prompt_tokens):
    return {"prompt_tokens": prompt_tokens, "ttft_s": first - t0, "prompt_tokens_per_s": prompt_tokens / (first - t0)}


def summary(runs, long_runs):
    keys = ("ttft_s", "prompt_tokens_per_s", "generation_tokens_per_s")
    out = {k: statistics.median(r[k] for r in runs if r[k] is not None) for k in keys}
    if long_runs:
        # The long prompt (--long-prompt-tokens, 512 by default) with one generated token.
        out["long_prompt_ttft_s"] = statistics.median(r["ttft_s"] for r in long_runs)
        out["long_prompt_tokens_per_s"] = statistics.median(r["prompt_tokens_per_s"] for r in long_runs)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--long-prompt-tokens", type=int, default=512,
                    help="also time the first token of a prompt this long (0: skip)")
    ap.add_argument("--out", default=os.path.join(os.environ.get("RBEE_CACHE", os.path.expanduser("~/.cache/rbee")),
                                                  "bench-results.json"))
    args = ap.parse_args()
    import jinja2
    import llama_cpp
    vocab = llama_cpp.Llama(model_path=args.gguf, n_ctx=256, verbose=False, vocab_only=True)
    prompt_text = jinja2.Environment().from_string(vocab.metadata["tokenizer.chat_template"]).render(
        messages=MESSAGES, add_generation_prompt=True)
    long_text, long_ids = long_prompt(vocab, args.long_prompt_tokens) if args.long_prompt_tokens else (None, None)
    worker, worker_long = bench_worker(args, prompt_text, long_text)
    cpp, cpp_long, version = bench_llamacpp(args, prompt_text, long_ids)
    w, c = summary(worker, worker_long), summary(cpp, cpp_long)
    ratio = {k: w[k] / c[k] for k in w}
    result = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": os.path.basename(args.gguf), "threads": args.threads, "runs": args.runs,
        "max_tokens": args.max_tokens, "llama_cpp_python": version,
        "long_prompt_tokens": len(long_ids) if long_ids else 0,
        "worker": {"median": w, "runs": worker, "long_prompt_runs": worker_long},
        "llama_cpp": {"median": c, "runs": cpp, "long_prompt_runs": cpp_long},
        "ratio_worker_over_llama_cpp": ratio,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"{'metric':28} {'llm-worker-rbee':>16} {'llama-cpp-python':>17} {'ratio':>7}")
    for k in w:
        print(f"{k:28} {w[k]:16.3f} {c[k]:17.3f} {ratio[k]:7.3f}")
    print(f"bench: wrote {os.path.abspath(args.out)}", file=sys.stderr)


if __name__ == "__main__":
    main()
