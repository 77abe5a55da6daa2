"""The PNG figures of docs/benchmarks.md; each title states N, the machine and the floor or
peer it is compared with."""
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


class Plots:
    """Mixed into report.Report: reads self.rec, self.hb, self.wb, self.wk, self.machine_text."""

    def save(self, fig, name):
        fig.tight_layout()
        path = os.path.join(self.plots, name)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return f"benchmarks/{name}"

    def plot_reconcile(self):
        runs = (self.rec or {}).get("runs", [])
        if not runs:
            return None
        ns = [r["n"] for r in runs]
        fig, ax = plt.subplots(figsize=(7, 4.2))
        x = range(len(ns))
        ax.bar([i - 0.2 for i in x], [r["floor"]["seconds"] for r in runs], 0.4, label="floor: same pods created directly")
        ax.bar([i + 0.2 for i in x], [r["operator"]["seconds"] for r in runs], 0.4, label="operator: RbeeWorkers → pod + status")
        for i, r in zip(x, runs):
            ax.annotate(f"{r['ratio_vs_floor']:.2f}×", (i + 0.2, r["operator"]["seconds"]), ha="center", va="bottom")
        ax.set_xticks(list(x), [f"N={n:,}" for n in ns])
        ax.set_yscale("log")
        ax.set_ylabel("seconds until all N done (log)")
        ax.set_title(f"Reconcile throughput vs floor, same API server, same run\n{self.machine_text}", fontsize=9)
        ax.legend(fontsize=8)
        return self.save(fig, "reconcile.png")

    def plot_heartbeat(self):
        steps = [s for s in (self.hb or {}).get("steps", []) if self.refused_share(s) <= 0.01]
        if not steps:
            return None
        fig, (a, b) = plt.subplots(1, 2, figsize=(9, 4))
        rate = [s["heartbeats_accepted_per_s"] for s in steps]
        a.plot(rate, [s["cpu_cores"]["process"] for s in steps], "o-", label="operator")
        a.plot(rate, [s["cpu_cores"]["machine"] for s in steps], "s--", label="whole machine")
        a.axhline(0.25, color="r", ls=":", label="target 0.25 core")
        a.set_xlabel("heartbeats/s accepted")
        a.set_ylabel("CPU cores")
        a.legend(fontsize=8)
        a.set_title("CPU", fontsize=9)
        b.plot(rate, [s["handler_p99_ms_upper_bound"] for s in steps], "o-", label="handler p99 (bucket bound)")
        b.plot(rate, [s["client_round_trip_p99_ms"] for s in steps], "s--", label="client round trip p99")
        b.axhline(5, color="r", ls=":", label="target 5 ms")
        b.set_xlabel("heartbeats/s accepted")
        b.set_ylabel("ms")
        b.set_yscale("log")
        b.legend(fontsize=8)
        b.set_title("latency", fontsize=9)
        ws = ", ".join(f"{s['workers']:,}" for s in steps)
        fig.suptitle(f"Heartbeat ingest, N = {ws} workers × {self.hb['interval_seconds']} s; {self.machine_text}", fontsize=9)
        return self.save(fig, "heartbeat.png")

    def plot_memory(self):
        if not self.hb:
            return None
        pts = [(0, self.hb["operator_rss_mib_at_0"])] + [(s["workers"], s["operator_rss_mib"]) for s in self.hb["steps"]
                                                          if self.refused_share(s) <= 0.01]
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label="operator RSS")
        for n, t in ((1000, 64), (10000, 256)):
            ax.plot([n], [t], "r_", ms=20, mew=2)
            ax.annotate(f"target ≤ {t} MiB at {n:,}", (n, t), fontsize=8, va="bottom")
        ax.set_xlabel("heartbeating workers (N)")
        ax.set_ylabel("MiB")
        ax.set_title(f"Operator memory vs fleet size (targets as red marks)\n{self.machine_text}", fontsize=9)
        return self.save(fig, "memory.png")

    def plot_stale(self):
        st = (self.hb or {}).get("stale_detection") or {}
        d = st.get("over_threshold_s") or []
        if not d:
            return None
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(sorted(d), [(i + 1) / len(d) for i in range(len(d))], "o-", drawstyle="steps-post")
        ax.axvline(1.0, color="r", ls=":", label="target p99 ≤ 1 s")
        ax.set_xlabel("(marked Stale − last heartbeat) − staleAfterSeconds, s")
        ax.set_ylabel("fraction of stopped workers")
        ax.legend(fontsize=8)
        ax.set_title(f"Stale detection: {st['stopped']} of {st['fleet']:,} workers stopped, "
                     f"staleAfter {st['stale_after_seconds']} s\n{self.machine_text}", fontsize=9)
        return self.save(fig, "stale.png")

    def plot_worker(self):
        if not self.wb:
            return None
        w, c = self.wb["worker"]["median"], self.wb["llama_cpp"]["median"]
        fig, axes = plt.subplots(1, 3, figsize=(9, 3.6))
        for ax, k, label in zip(axes, ("prompt_tokens_per_s", "generation_tokens_per_s", "ttft_s"),
                                ("prefill tokens/s", "decode tokens/s", "TTFT s (lower is better)")):
            ax.bar(["llm-worker-rbee", "llama.cpp"], [w[k], c[k]], color=["C0", "C1"])
            ax.set_title(f"{label}\nratio {w[k] / c[k]:.2f}", fontsize=9)
            ax.tick_params(labelsize=8)
        fig.suptitle(f"Worker vs llama.cpp (llama-cpp-python {self.wb.get('llama_cpp_python')}), "
                     f"{self.wb['model']}, {self.wb['threads']} threads, {self.wb['runs']} runs; {self.machine_text}", fontsize=8)
        return self.save(fig, "worker.png")

    def plot_concurrency(self):
        conc = (self.wk or {}).get("concurrent_streams") or []
        if not conc:
            return None
        fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.8))
        s = [c["streams"] for c in conc]
        a.plot(s, [c["output_tokens_per_s"] for c in conc], "o-")
        a.set_xlabel("concurrent streams")
        a.set_ylabel("output tokens/s (all streams)")
        a.set_title("throughput (peer: 1 stream, same worker, same run)", fontsize=9)
        b.plot(s, [(c["inter_token_p99_s"] or 0) * 1000 for c in conc], "o-", label="p99 gap between tokens")
        b.plot(s, [(c["tpot_median_s"] or 0) * 1000 for c in conc], "s--", label="median time per output token")
        b.set_xlabel("concurrent streams")
        b.set_ylabel("ms")
        b.legend(fontsize=8)
        fig.suptitle(f"Worker concurrent streams, {self.wk['model']}, {self.wk['threads']} threads, "
                     f"{self.wk['max_tokens']} tokens each; {self.machine_text}", fontsize=8)
        return self.save(fig, "worker-concurrency.png")

    def plot_start(self):
        st = (self.wk or {}).get("start")
        if not st:
            return None
        fig, ax = plt.subplots(figsize=(6, 3.6))
        labels = ["cold read of weights\n(floor)", "start → Ready\n(cold cache)", "start → Ready\n(warm cache)"]
        vals = [st["cold_read_s"], st["start_to_ready_cold_s"], st["start_to_ready_warm_s"]]
        ax.bar(labels, vals, color=["C7", "C0", "C2"])
        ax.set_ylabel("seconds (median)")
        ax.tick_params(labelsize=8)
        ax.set_title(f"Worker start vs cold read, {st['weights_bytes'] / 2**20:.0f} MiB GGUF, "
                     f"{st['runs']} runs\n{self.machine_text}", fontsize=9)
        return self.save(fig, "worker-start.png")

