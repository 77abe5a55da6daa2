"""Writes docs/benchmarks.md, docs/benchmarks.json and docs/benchmarks/*.png from the raw
results of tests/bench/run. Every number it prints comes from those files."""
import argparse
import json
import math
import os
import platform

from plots import Plots


def load(path):
    if path and os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return None


def num(v):
    return v if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v)) else None


def fmt(v, digits=2):
    v = num(v)
    if v is None:
        return "n/a"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.{digits}f}"


def verdict(value, target, lower_is_better=True):
    value = num(value)
    if value is None:
        return "not measured"
    ok = value <= target if lower_is_better else value >= target
    if ok:
        return "met"
    return f"missed by {value / target:.2f}× (+{fmt(value - target)})" if lower_is_better else \
        f"missed ({fmt(value)} < {fmt(target)})"


class Report(Plots):
    def __init__(self, args):
        self.args = args
        self.rec = load(args.reconcile)
        self.hb = load(args.heartbeat)
        self.wb = load(args.worker_bench)
        self.wk = load(args.worker)
        self.commands = {}
        for part, path in (("reconcile", args.reconcile), ("heartbeat", args.heartbeat), ("worker", args.worker)):
            cmd = os.path.splitext(path or "")[0] + ".command"
            if os.path.exists(cmd):
                with open(cmd) as f:
                    self.commands[part] = f.read().strip()
        m = (self.rec or self.hb or {}).get("machine") or machine_here()
        self.machine = m
        self.machine_text = f"{m['cores']} cores ({m.get('cpu_model') or 'unknown CPU'}), {m['memory_gib']} GiB"
        self.plots = os.path.join(args.docs, "benchmarks")
        os.makedirs(self.plots, exist_ok=True)

    def step(self, workers):
        for s in (self.hb or {}).get("steps", []):
            if workers * 0.99 <= s["workers"] <= workers and self.refused_share(s) <= 0.01:
                return s
        return None

    def refused_share(self, step):
        codes = step.get("responses_by_status") or {}
        total = sum(codes.values())
        return 1 - codes.get("200", 0) / total if total else 1.0

    def largest_step(self):
        """The largest step whose heartbeats were (>= 99%) accepted: a disturbed window is shown
        but feeds no headline figure."""
        steps = [s for s in (self.hb or {}).get("steps", []) if self.refused_share(s) <= 0.01]
        return max(steps, key=lambda s: s["workers"]) if steps else None

    def reconcile_run(self, n):
        for r in (self.rec or {}).get("runs", []):
            if r["n"] == n:
                return r
        return None

    def keys(self):
        big = self.largest_step() or {}
        at_1000_hb = next((s for s in (self.hb or {}).get("steps", [])
                           if s["heartbeats_accepted_per_s"] >= 900 and self.refused_share(s) <= 0.01), None)
        s1k, s10k = self.step(1000), self.step(10000)
        wr = (self.wb or {}).get("ratio_worker_over_llama_cpp", {})
        out = {
            "reconcile_ratio_vs_floor_1000": (self.reconcile_run(1000) or {}).get("ratio_vs_floor"),
            "heartbeats_per_s": big.get("heartbeats_accepted_per_s"),
            "operator_cpu_cores_at_1000_hb_s": (at_1000_hb or {}).get("cpu_cores", {}).get("process"),
            "heartbeat_p99_ms": big.get("handler_p99_ms_upper_bound"),
            "status_writes_per_heartbeat": big.get("status_writes_per_heartbeat"),
            "stale_detection_p99_over_threshold_s": ((self.hb or {}).get("stale_detection") or {}).get(
                "p99_over_threshold_s"),
            "operator_rss_mib_1000": (s1k or {}).get("operator_rss_mib"),
            "operator_rss_mib_10000": (s10k or {}).get("operator_rss_mib"),
            "worker_decode_ratio_vs_llamacpp": wr.get("generation_tokens_per_s"),
            "worker_prefill_ratio_vs_llamacpp": wr.get("prompt_tokens_per_s"),
            "worker_ttft_ratio_vs_llamacpp": wr.get("ttft_s"),
            "token_reviews_per_heartbeat": big.get("token_reviews_per_heartbeat"),
            "heartbeat_client_p99_ms": big.get("client_round_trip_p99_ms"),
            "operator_rss_mib_0": (self.hb or {}).get("operator_rss_mib_at_0"),
        }
        for r in (self.rec or {}).get("runs", []):
            out[f"reconcile_ratio_vs_floor_{r['n']}"] = r["ratio_vs_floor"]
        for c in (self.wk or {}).get("concurrent_streams", []):
            out[f"worker_throughput_{c['streams']}_streams_over_one_stream"] = c.get("throughput_over_one_stream")
            out[f"worker_inter_token_p99_ms_{c['streams']}_streams"] = (
                c["inter_token_p99_s"] * 1000 if num(c.get("inter_token_p99_s")) is not None else None)
        st = (self.wk or {}).get("start") or {}
        out["worker_start_over_cold_read"] = st.get("start_cold_over_cold_read")
        return {k: num(v) for k, v in out.items()}

    # ---- text ----------------------------------------------------------------------------
    def markdown(self, keys, figs):
        a, m = self.args, self.machine
        L = ["# Benchmarks", "",
             f"Generated by `{a.command}` ({a.mode} mode) on {a.date}, in {a.runtime_min:.0f} minutes. "
             "Regenerate with the same command; raw numbers are in [benchmarks.json](benchmarks.json).", ""]
        skipped = [p for p in ("reconcile", "heartbeat", "worker") if p not in a.only.split(",")]
        if skipped:
            L += [f"Parts not run by this command come from the latest run that measured them (raw results in "
                  "target/bench/): " + "; ".join(f"{p}: `{self.commands.get(p, 'unknown')}`" for p in skipped)
                  + ". Each section states the N and settings it ran with.", ""]
        L += [
             f"**Machine:** {m['cores']} cores ({m.get('cpu_model') or 'unknown CPU'}), {m['memory_gib']} GiB memory, "
             f"Linux {m.get('kernel', '')}. The operator, kube-apiserver, etcd, scheduler, controller manager, kwok "
             "and the load generator all run on these cores at once (tests/testenv, kwok nodes), so every operator "
             "number below carries the cost of a cluster that shares its CPUs.", "",
             "Every figure is a ratio against a floor or a peer measured in the same run.", "",
             "| | measured | target | |", "|---|---|---|---|"]
        rows = [
            ("Reconcile time vs direct pod creation, N=1,000", keys["reconcile_ratio_vs_floor_1000"], 1.25, "×"),
            ("Operator CPU at 1,000 heartbeats/s", keys["operator_cpu_cores_at_1000_hb_s"], 0.25, " cores"),
            ("Heartbeat handler p99", keys["heartbeat_p99_ms"], 5, " ms"),
            ("Status writes per heartbeat (kubelet Lease: 1.0)", keys["status_writes_per_heartbeat"], 0.1, ""),
            ("Stale detection p99 beyond staleAfter", keys["stale_detection_p99_over_threshold_s"], 1, " s"),
            ("Operator RSS at 1,000 workers", keys["operator_rss_mib_1000"], 64, " MiB"),
            ("Operator RSS at 10,000 workers", keys["operator_rss_mib_10000"], 256, " MiB"),
        ]
        for label, v, t, unit in rows:
            L.append(f"| {label} | {fmt(v)}{unit if num(v) is not None else ''} | ≤ {t}{unit} | {verdict(v, t)} |")
        big = self.largest_step()
        if big and keys["operator_cpu_cores_at_1000_hb_s"] is None:
            L.append(f"| Operator CPU at {fmt(big['heartbeats_accepted_per_s'], 0)} heartbeats/s ({big['workers']:,} workers; "
                     f"1,000/s not run) | {fmt(big['cpu_cores']['process'], 3)} cores | ≤ 0.25 cores at 1,000/s | |")
        if big and keys["operator_rss_mib_10000"] is None and big["workers"] != 1000:
            L.append(f"| Operator RSS at {big['workers']:,} workers (10,000 not run) | {fmt(big['operator_rss_mib'], 1)} MiB "
                     "| ≤ 256 MiB at 10,000 | |")
        L += [f"| Worker decode tokens/s vs llama.cpp | {fmt(keys['worker_decode_ratio_vs_llamacpp'])}× | (peer) | |",
              f"| Worker prefill tokens/s vs llama.cpp | {fmt(keys['worker_prefill_ratio_vs_llamacpp'])}× | (peer) | |", ""]
        L += self.section_reconcile(figs) + self.section_heartbeat(keys, figs) + self.section_stale(figs)
        L += self.section_memory(keys, figs) + self.section_worker(figs) + self.section_gpu()
        return "\n".join(L) + "\n"

    def section_reconcile(self, figs):
        if not self.rec:
            return []
        L = ["## 1. Reconcile throughput", "",
             f"Apply N `RbeeWorker`s ({self.rec['client_concurrency']} creates in flight) to a freshly started operator "
             "(chart RBAC, default flags) and time until every one has its pod and a status whose "
             "`observedGeneration` equals its generation, both seen through a watch. **Floor:** the same client "
             "creates the same N pods (built by the operator's own `build_pod`) directly through the same API "
             "server, with the same concurrency, in the same run, until the watch has seen all N. Each run has its "
             "namespace to itself; the previous one is deleted and gone first.", "",
             "| N | floor s | operator s | ratio | workers created s | all pods seen s | operator CPU cores | status writes | reconciles | RSS MiB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
        for r in self.rec["runs"]:
            o = r["operator"]
            L.append(f"| {r['n']:,} | {fmt(r['floor']['seconds'])} | {fmt(o['seconds'])} | {fmt(r['ratio_vs_floor'])} | "
                     f"{fmt(o['all_workers_created_s'])} | {fmt(o['all_pods_seen_s'])} | {fmt(o['cpu_cores']['process'])} | "
                     f"{fmt(o['status_writes'])} | {fmt(o['reconciles'])} | {fmt(o['operator_rss_mib'], 0)} |")
        r = self.reconcile_run(1000)
        if r and r["ratio_vs_floor"] > 1.25:
            o = r["operator"]
            mean = o.get("reconcile_mean_s")
            bound = (f" Reconciles took {fmt(mean, 3)} s on average (p99 ≤ {fmt(o['reconcile_p99_s_upper_bound'], 3)} s), "
                     "so 16 at once (the default `--concurrency`) allow about "
                     f"{fmt(16 / mean / (o['reconciles'] / r['n']))} workers/s; the floor created "
                     f"{fmt(r['n'] / r['floor']['seconds'])} pods/s." if num(mean) else "")
            L += ["", f"**Target missed at N=1,000** by {r['ratio_vs_floor'] / 1.25:.2f}× "
                  f"({fmt(r['ratio_vs_floor'])} vs ≤ 1.25). What the run shows: per worker the operator path costs "
                  f"one RbeeWorker create, one pod and one Service apply, a PodCreated Event and "
                  f"{fmt(o['status_writes'] / r['n'])} status writes in {fmt(o['reconciles'] / r['n'])} reconciles "
                  "(each waits until the watch caches show its own writes), and the Service brings the "
                  f"EndpointSlice controller's writes, against the floor's one pod create.{bound} The operator itself "
                  f"used {fmt(o['cpu_cores']['process'])} of the machine's {fmt(o['cpu_cores']['machine'])} busy cores "
                  f"({self.machine['cores']} cores in all); the rest is the API server, etcd, scheduler, kwok and the client."]
        if figs.get("reconcile"):
            L += ["", f"![reconcile]({figs['reconcile']})"]
        return L + [""]

    def section_heartbeat(self, keys, figs):
        if not self.hb:
            return []
        h = self.hb
        L = ["## 2. Heartbeat ingest", "",
             f"`heartbeat-bench`: simulated workers, each a real `RbeeWorker` with a kwok pod and a real bound "
             f"service-account token (TokenRequest, audience `rbee-operator`), POST a heartbeat every "
             f"{h['interval_seconds']} s, spread over the interval, to the real operator (default flags: status report "
             f"period {h['status_report_period_seconds']} s). Numbers are over the measured window after a warm-up of two "
             "intervals. Handler latency comes from the operator's histogram (upper bound of the bucket); the client "
             "round trip is measured by the load generator. **Peer** for writes: kubelet's Lease heartbeat, 1.0 write "
             "per heartbeat.", "",
             "| workers | grown in s | window s | accepted hb/s | operator CPU | load generator CPU | machine busy | handler p50 / p99 ms | client p50 / p99 ms | TokenReviews / hb | status writes / hb | responses |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for s in h["steps"]:
            c = s["cpu_cores"]
            L.append(f"| {s['workers']:,} | {fmt(s.get('grow_seconds'), 0)} | {fmt(s['window_s'], 0)} | {fmt(s['heartbeats_accepted_per_s'])} | {fmt(c['process'], 3)} | "
                     f"{fmt(c['load_generator'], 3)} | {fmt(c['machine'])} | ≤ {fmt(s['handler_p50_ms_upper_bound'], 1)} / ≤ "
                     f"{fmt(s['handler_p99_ms_upper_bound'], 1)} | {fmt(s['client_round_trip_p50_ms'])} / "
                     f"{fmt(s['client_round_trip_p99_ms'])} | {fmt(s['token_reviews_per_heartbeat'], 4)} | "
                     f"{fmt(s['status_writes_per_heartbeat'], 3)} | {s['responses_by_status']} |")
        big = self.largest_step()
        notes = []
        for s in h["steps"]:
            if self.refused_share(s) > 0.01:
                notes.append(f"At {s['workers']:,} workers {self.refused_share(s):.1%} of the heartbeats in the window were "
                             f"refused ({s['responses_by_status']}; 503 = not the leader or TokenReview unavailable, "
                             "404 = worker not in the operator's cache): the window was disturbed, so this row feeds "
                             "no headline figure.")
        prev = 0
        for s in h["steps"]:
            if num(s.get("grow_seconds")):
                notes.append(f"Growing the fleet from {prev:,} to {s['workers']:,} workers (create, pod Running, token, "
                             f"first heartbeat) took {fmt(s['grow_seconds'], 0)} s: "
                             f"{fmt((s['workers'] - prev) / s['grow_seconds'])} workers/s.")
            prev = s["workers"]
        cpu = keys["operator_cpu_cores_at_1000_hb_s"]
        if cpu is not None and cpu > 0.25:
            notes.append(f"Operator CPU at 1,000 heartbeats/s misses ≤ 0.25 core by {cpu / 0.25:.2f}× "
                         f"({fmt(cpu, 3)} cores; mean handler time {fmt(big['handler_mean_ms'], 3)} ms, so the "
                         "rest is HTTP, JSON and the periodic status writes; the machine was "
                         f"{fmt(big['cpu_cores']['machine'])} cores busy in total).")
        p99 = keys["heartbeat_p99_ms"]
        if p99 is not None and p99 > 5:
            notes.append(f"Handler p99 misses ≤ 5 ms: the p99 falls in the bucket ending at {fmt(p99, 1)} ms "
                         f"(mean {fmt(big['handler_mean_ms'], 3)} ms); with "
                         f"{fmt(big['cpu_cores']['machine'])} of {self.machine['cores']} cores busy, the tail is "
                         "time spent waiting for a CPU.")
        w = keys["status_writes_per_heartbeat"]
        if w is not None and w > 0.1:
            ratio = h["interval_seconds"] / h["status_report_period_seconds"]
            notes.append(f"Status writes per heartbeat miss ≤ 0.1 by {w / 0.1:.2f}× ({fmt(w, 3)}). Every simulated "
                         "heartbeat carries new VRAM and memory numbers, and the operator refreshes such numbers once "
                         f"per report period per worker: interval / period = {h['interval_seconds']} s / "
                         f"{h['status_report_period_seconds']} s = {ratio:.3f} writes per heartbeat by design; by the same "
                         f"arithmetic `--status-report-period-seconds` ≥ {int(h['interval_seconds'] / 0.1)} would meet "
                         "the target (not measured here).")
        if notes:
            L += [""] + [f"- {n}" for n in notes]
        if figs.get("heartbeat"):
            L += ["", f"![heartbeat]({figs['heartbeat']})"]
        return L + [""]

    def section_stale(self, figs):
        st = (self.hb or {}).get("stale_detection")
        if not st:
            return []
        d = st["over_threshold_s"]
        L = ["## 3. Staleness detection latency", "",
             f"With {st['fleet']:,} workers heartbeating, {st['stopped']} chosen at random stop. For each: (time a "
             "watch first sees phase `Stale` − send time of its last accepted heartbeat) − staleAfterSeconds "
             f"({st['stale_after_seconds']} s). **Floor:** 0 s (marked exactly at the threshold). "
             f"Detected {st['detected']} of {st['stopped']}.", "",
             f"p50 {fmt(st['p50_over_threshold_s'], 3)} s, p99 {fmt(st['p99_over_threshold_s'], 3)} s (target ≤ 1 s: "
             f"{verdict(st['p99_over_threshold_s'], 1)}); all: {', '.join(f'{x:.3f}' for x in d)} s."]
        L += ["", f"The last stopped worker was seen Stale {fmt(st.get('seconds_until_all_seen'), 1)} s after the "
              "workers were stopped; they are deleted afterwards, so later steps measure only heartbeating workers."]
        if figs.get("stale"):
            L += ["", f"![stale]({figs['stale']})"]
        return L + [""]

    def section_memory(self, keys, figs):
        if not self.hb:
            return []
        L = ["## 4. Operator memory", "",
             "Resident set of the operator process (VmRSS) with 0 workers (started, leader), and after each "
             "heartbeat step; peak (VmHWM) in brackets. **Peer:** the targets.", "",
             "| workers | RSS MiB | target |", "|---|---|---|",
             f"| 0 | {fmt(self.hb['operator_rss_mib_at_0'], 1)} | |"]
        for s in self.hb["steps"]:
            t = {1000: "≤ 64 MiB", 10000: "≤ 256 MiB"}.get(s["workers"], "")
            note = " (disturbed window, see §2)" if self.refused_share(s) > 0.01 else ""
            L.append(f"| {s['workers']:,} | {fmt(s['operator_rss_mib'], 1)} ({fmt(s['operator_peak_rss_mib'], 1)}){note} | {t} |")
        base = self.hb["operator_rss_mib_at_0"]
        for key, n, t in (("operator_rss_mib_1000", 1000, 64), ("operator_rss_mib_10000", 10000, 256)):
            v = keys[key]
            if v is not None and v > t:
                rec = self.reconcile_run(n)
                without = ""
                if rec:
                    r_rss = rec["operator"]["operator_rss_mib"]
                    without = (f" The reconcile benchmark's operator, with the same {n:,} workers and pods but no "
                               f"heartbeats, held {fmt(r_rss, 1)} MiB ({r_rss / v:.0%} of it)"
                               + (", so watch caches and reconciling, not heartbeat state, hold most of it."
                                  if r_rss >= 0.6 * v else "."))
                L += ["", f"RSS misses ≤ {t} MiB at {n:,} workers by {v / t:.2f}× ({fmt(v, 1)} MiB): "
                      f"{fmt((v - base) * 1024 / n, 0)} KiB per worker above the {fmt(base, 1)} MiB of an idle "
                      f"operator.{without} No heap profile was taken in this run."]
        if figs.get("memory"):
            L += ["", f"![memory]({figs['memory']})"]
        return L + [""]

    def section_worker(self, figs):
        L = []
        if self.wb:
            w, c, r = self.wb["worker"]["median"], self.wb["llama_cpp"]["median"], self.wb["ratio_worker_over_llama_cpp"]
            L += ["## 5. Worker inference on CPU", "",
                  f"`worker-image/scripts/bench`: `llm-worker-rbee` over its streaming HTTP API against llama.cpp "
                  f"(llama-cpp-python {self.wb.get('llama_cpp_python')}, in process) on the same GGUF "
                  f"({self.wb['model']}), same prompt tokens, {self.wb['threads']} threads each, greedy, "
                  f"{self.wb['max_tokens']} new tokens, median of {self.wb['runs']} runs after a warm-up, one after "
                  "the other in the same run. **Peer:** llama.cpp.", "",
                  "| | llm-worker-rbee | llama.cpp | ratio |", "|---|---|---|---|"]
            for k, label in (("prompt_tokens_per_s", "prefill tokens/s"), ("generation_tokens_per_s", "decode tokens/s"),
                             ("ttft_s", "time to first token s")):
                L.append(f"| {label} | {fmt(w[k])} | {fmt(c[k])} | {fmt(r[k])} |")
            if figs.get("worker"):
                L += ["", f"![worker]({figs['worker']})"]
            L.append("")
        if self.wk:
            k = self.wk
            L += ["### Concurrent streams", "",
                  f"S streaming completions at once against one worker ({k['threads']} threads, {k['max_tokens']} "
                  "tokens each). **Peer:** the same worker with one stream in the same run.", "",
                  "| streams | completed | output tokens/s | vs 1 stream | TTFT p50 s | median time per output token ms | p99 gap between tokens ms |",
                  "|---|---|---|---|---|---|---|"]
            for c in k["concurrent_streams"]:
                L.append(f"| {c['streams']} | {c['completed']} {c['rejected'] or ''} | {fmt(c['output_tokens_per_s'])} | "
                         f"{fmt(c['throughput_over_one_stream'])} | {fmt(c['ttft_p50_s'], 3)} | "
                         f"{fmt((c['tpot_median_s'] or float('nan')) * 1000, 1)} | {fmt((c['inter_token_p99_s'] or float('nan')) * 1000, 1)} |")
            if figs.get("concurrency"):
                L += ["", f"![concurrency]({figs['concurrency']})"]
            st = k["start"]
            L += ["", "## 6. Worker start", "",
                  f"Process start to `/health` 200, median of {st['runs']} runs, with the weights evicted from the page "
                  f"cache (`posix_fadvise(DONTNEED)`) and with them cached. **Floor:** reading the "
                  f"{st['weights_bytes'] / 2**20:.0f} MiB weights file cold, same run.", "",
                  "| cold read s | warm read s | start → Ready, cold s | start → Ready, warm s | start (cold) / cold read |",
                  "|---|---|---|---|---|",
                  f"| {fmt(st['cold_read_s'], 3)} | {fmt(st['warm_read_s'], 3)} | {fmt(st['start_to_ready_cold_s'], 3)} | "
                  f"{fmt(st['start_to_ready_warm_s'], 3)} | {fmt(st['start_cold_over_cold_read'])} |"]
            if figs.get("start"):
                L += ["", f"![start]({figs['start']})"]
        return L

    def section_gpu(self):
        g = load(self.args.gpu_check)
        L = ["", "## 7. Worker on a GPU", "",
             "`worker-image/scripts/gpu-check`: the cuda build (kernels for compute capabilities 80, 89 and 90) "
             "on generated Llama models (`rbee-gen-model`, weights from a seed): 32 greedy steps against the "
             "worker's own cpu path for each quant format, the heartbeat's VRAM against `nvidia-smi`, and decode "
             "and prefill speed of a TinyLlama-1.1B-shaped model through the HTTP API. **Floor:** the weight bytes "
             "one token reads, at the GPU's memory bandwidth (driver: memory clock × bus width).", ""]
        if not g or g.get("mode") != "gpu":
            return L + ["Not measured: no GPU was available to the runs that wrote this file. Run "
                        "`worker-image/scripts/gpu-check` on a GPU machine and copy its `gpu-check.json` to "
                        "`docs/gpu-check.json`.", "",
                        "| | measured | target |", "|---|---|---|",
                        "| greedy tokens equal to the cpu path (Q4_0, Q4_1, Q8_0, Q4_K) | not measured | all |",
                        "| largest logit difference / largest logit | not measured | ≤ 0.02 |",
                        "| heartbeat VRAM used vs nvidia-smi | not measured | within 5% |",
                        "| decode, fraction of memory bandwidth (Q8_0, Q4_1) | not measured | ≥ 0.7 |",
                        "| prefill tokens/s, 2,048-token prompt | not measured | |", ""]
        m, par, hb, sp = g["machine"], g["parity"], g["heartbeat"], g["speed"]["formats"]
        L += [f"**Machine:** {m['gpu']} (driver {m['driver']}, {m['bandwidth_bytes_per_s'] / 1e12:.2f} TB/s), "
              f"{m['host_cores']} host cores; gpu-check took {g['duration_s']:.0f} s.", "",
              "| format | tokens equal | logit difference / largest | tolerance |", "|---|---|---|---|"]
        for fmt_name, r in par["formats"].items():
            L.append(f"| {fmt_name} | {r.get('tokens_equal', 'error')} | {fmt(r.get('relative_logit_diff'), 5)} | "
                     f"{par['tolerance_relative']} |")
        L += ["", f"Heartbeat VRAM used {hb['vram']['usedBytes'] / 2**30:.2f} GiB vs nvidia-smi "
              f"{hb['nvidia_smi_used_bytes'] / 2**30:.2f} GiB (difference {hb['used_difference']:.1%}); "
              f"UUID and name match: {hb['uuid_matches'] and hb['name_matches']}.", "",
              "| format | weight bytes/token | decode tokens/s | fraction of bandwidth (goal 0.7) | prefill tokens/s |",
              "|---|---|---|---|---|"]
        for fmt_name, r in sp.items():
            L.append(f"| {fmt_name} | {r['weight_bytes_per_token'] / 2**20:.0f} MiB | {fmt(r['decode_tokens_per_s'])} | "
                     f"{fmt(r['bandwidth_fraction'], 3)} | {fmt(r['prefill_tokens_per_s'])} "
                     f"({r['prefill_prompt_tokens']} tokens) |")
        return L + [""]


def machine_here():
    mem = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) / 2**20
    return {"cores": os.cpu_count(), "memory_gib": round(mem, 1), "cpu_model": platform.processor(),
            "kernel": platform.release()}


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--reconcile")
    ap.add_argument("--heartbeat")
    ap.add_argument("--worker-bench")
    ap.add_argument("--worker")
    ap.add_argument("--gpu-check", default=os.path.join(os.path.dirname(__file__), "../../docs/gpu-check.json"),
                    help="gpu-check.json of worker-image/scripts/gpu-check on a GPU (default: docs/gpu-check.json)")
    ap.add_argument("--docs", required=True)
    ap.add_argument("--command", required=True)
    ap.add_argument("--mode", required=True)
    ap.add_argument("--only", default="reconcile,heartbeat,worker")
    ap.add_argument("--date", required=True)
    ap.add_argument("--runtime-min", type=float, required=True)
    args = ap.parse_args()
    r = Report(args)
    figs = {"reconcile": r.plot_reconcile(), "heartbeat": r.plot_heartbeat(), "memory": r.plot_memory(),
            "stale": r.plot_stale(), "worker": r.plot_worker(), "concurrency": r.plot_concurrency(),
            "start": r.plot_start()}
    keys = r.keys()
    out = {"generated": args.date, "command": args.command, "mode": args.mode, "runtime_minutes": args.runtime_min,
           "machine": r.machine, **keys,
           "raw": {"reconcile": r.rec, "heartbeat": r.hb, "worker_bench": r.wb, "worker": r.wk}}
    with open(os.path.join(args.docs, "benchmarks.json"), "w") as f:
        json.dump(out, f, indent=1, allow_nan=False, default=str)
    with open(os.path.join(args.docs, "benchmarks.md"), "w") as f:
        f.write(r.markdown(keys, figs))


if __name__ == "__main__":
    main()
