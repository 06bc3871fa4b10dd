"""Turn a pytest-benchmark JSON (pytest bench/ --benchmark-only --benchmark-json=F) into Markdown tables:
end-to-end prefill/decode tokens/s with ratios against the peers in the same run, peak RSS, kernels, and the
batched decode of bench_batch.py (aggregate tok/s, ratios, the scaling curve against the GEMM peak).

usage: python bench/report.py F.json [G.json ...] [--plot PNG]
With several files (e.g. round robins run in separate processes) it then prints each tinygpt runner's decode
ratio against every peer as the median over the runs, with the smallest and largest. A scaling curve (from
bench_batch_scaling) is drawn to PNG (default: beside the first JSON, NAME-scaling.png) when matplotlib is installed.
"""
import json
import statistics
import sys
from pathlib import Path


def table(head, rows):
    """A Markdown table and a blank line; nothing when there are no rows."""
    if not rows:
        return
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for r in rows:
        print("| " + " | ".join(str(c) for c in r) + " |")
    print()


def main(data):
    rows = [(b["name"], b["extra_info"], b["stats"]["median"]) for b in data["benchmarks"]]
    mi = data.get("machine_info", {})
    print(f"machine: {mi.get('cpu', {}).get('brand_raw', '?')}, {mi.get('cpu', {}).get('count', '?')} cpus; "
          f"run {data.get('datetime', '?')}\n")
    for n, x, _ in rows:
        if "round_robin" in x:
            rr = x["round_robin"]
            peers = {k: v["decode_tok_s"] for k, v in rr.items() if not k.startswith("tinygpt")}
            print(f"Round robin (every runner once per pass, medians; threads: {x.get('threads')}):\n")
            print("| runner | prefill 64 tok/s | prefill ms | decode tok/s | " + " | ".join(f"x {k}" for k in peers) + " |")
            print("|---|---|---|---|" + "---|" * len(peers))
            for name, v in rr.items():
                ratios = " | ".join(f"{v['decode_tok_s'] / p:.2f}" for p in peers.values())
                print(f"| {name} | {v['prefill_tok_s']} | {64e3 / v['prefill_tok_s']:.1f} | {v['decode_tok_s']} | {ratios} |")
            print("\nfirst tokens: " + "; ".join(f"{k}: {v['first_tokens']}" for k, v in rr.items()) + "\n")
    e2e = [(n, x) for n, x, _ in rows if "decode_tok_s" in x]
    if e2e:
        ref = {}
        for n, x in e2e:
            if x.get("peer") == "llama.cpp":
                ref[f"llama.cpp {x['ftype'].upper()}"] = x["decode_tok_s"]
            elif x.get("peer") == "transformers":
                ref[f"transformers {x['device']} {x['dtype']}"] = x["decode_tok_s"]
        print("| run | size | prefill 64 tok/s | prefill ms | decode tok/s | " +
              " | ".join(f"x {k}" for k in ref) + " |")
        print("|---|---|---|---|---|" + "---|" * len(ref))
        for n, x in e2e:
            label = (f"tinygpt {x['backend']} {x['dtype']}" if "backend" in x else
                     f"llama.cpp {x['ftype'].upper()}" if x.get("peer") == "llama.cpp" else
                     f"transformers {x['device']} {x['dtype']}")
            ratios = " | ".join(f"{x['decode_tok_s'] / v:.2f}" for v in ref.values())
            print(f"| {label} | {x.get('size', '124M')} | {x['prefill_tok_s']} | {round(64e3 / x['prefill_tok_s'], 1)} "
                  f"| {x['decode_tok_s']} | {ratios} |")
        print()
    longp = [(n, x) for n, x, _ in rows if "T" in x and "prefill_tok_s" in x and "kernel" not in x]
    if longp:
        print("| long prefill | T | tok/s |\n|---|---|---|")
        for n, x in longp:
            print(f"| {x['backend']} {x['dtype']} | {x['T']} | {x['prefill_tok_s']} |")
        print()
    rss = [(n, x) for n, x, _ in rows if "peak_rss_mb" in x and "interpreter_mb" in x]
    ppl_rss = [(n, x) for n, x, _ in rows if "peak_rss_mb" in x and "one_window_forward_mb" in x]
    table(["peak RSS (perplexity)", "tokens", "MiB", "one window's forward MiB", "weights MiB", "budget MiB"],
          [[x["dtype"], x["tokens"], x["peak_rss_mb"], x["one_window_forward_mb"], x["weights_mb"], x["budget_mb"]]
           for _, x in ppl_rss])
    table(["peak RSS (CLI run, converted model)", "MiB", "interpreter MiB", "weights MiB", "budget MiB"],
          [[f"{x['backend']} {x['dtype']}", x["peak_rss_mb"], x["interpreter_mb"], x["weights_mb"], x["budget_mb"]]
           for _, x in rss])
    kern = [(n, x, t) for n, x, t in rows if "kernel" in x]
    if kern:
        print("| kernel | median | GFLOP/s | % of same-run GEMM peak | GB/s | MB/s |\n|---|---|---|---|---|---|")
        for n, x, t in kern:
            f = x.get("fraction_of_gemm_peak")
            pct = f"{100 * f:.0f}" if isinstance(f, (int, float)) else ""
            print(f"| {n} | {t * 1e3:.3f} ms | {x.get('gflop_s', '')} | {pct} | {x.get('gb_s', '')} | {x.get('mb_s', '')} |")
        for n, x, _ in kern:
            if "gb_s_per_copy" in x:
                print(f"\n{n}: GB/s of each fresh copy of the same matrix: {x['gb_s_per_copy']}")
            if "head_equiv_gb_s" in x:
                print(f"\n{n}: {x['rows_exact']} of {x['N']} rows evaluated exactly; the whole head's bytes over "
                      f"its time: {x['head_equiv_gb_s']} GB/s")


def across_runs(datas):
    """Median (min-max) decode ratio of each tinygpt runner over each peer, across several round robins."""
    runs = []
    for data in datas:
        for b in data["benchmarks"]:
            if "round_robin" in b["extra_info"]:
                runs.append({k: v["decode_tok_s"] for k, v in b["extra_info"]["round_robin"].items()})
    if len(runs) < 2:
        return
    peers = [k for k in runs[0] if not k.startswith("tinygpt")]
    print(f"Decode ratio over each peer across {len(runs)} round robins: median (min-max):\n")
    print("| runner | " + " | ".join(f"x {p}" for p in peers) + " |")
    print("|---|" + "---|" * len(peers))
    for name in (k for k in runs[0] if k.startswith("tinygpt")):
        cells = []
        for p in peers:
            r = [run[name] / run[p] for run in runs if name in run and p in run]
            cells.append(f"{statistics.median(r):.2f} ({min(r):.2f}-{max(r):.2f})")
        print(f"| {name} | " + " | ".join(cells) + " |")
    print()


def batched(data):
    """bench_batch_round_robin: aggregate decode tok/s of 8 sequences, same-pass ratios against each reference."""
    for b in data["benchmarks"]:
        x = b["extra_info"].get("batched")
        if not x:
            continue
        refs = x["refs"]
        print(f"Batched decode, {x['size']}: B = {x['B']} prompts of {min(x['prompt_lens'])}-{max(x['prompt_lens'])} "
              f"tokens, {x['n_new']} new greedy tokens each, threads {x['threads']}; round robin, medians of "
              f"{x['passes']} passes; ratios taken within each pass:\n")
        print("| runner | aggregate decode tok/s | per-sequence tok/s | prefill ms | GFLOP/s | "
              + " | ".join(f"x {r}" for r in refs) + " |")
        print("|---|---|---|---|---|" + "---|" * len(refs))
        for name, v in x["runners"].items():
            cells = " | ".join(f"{v['ratios'][r]:.2f}" if r in v["ratios"] else "—" for r in refs)
            print(f"| {name} | {v['agg_decode_tok_s']} | {v['per_seq_tok_s']} | {v['prefill_ms']} | {v['gflop_s']} "
                  f"| {cells} |")
        eq = ", ".join(k for k, ok in x["tokens_equal_one_at_a_time"].items() if ok)
        print(f"\ngreedy tokens equal to the same prompts run one at a time (asserted every pass): {eq}")
        same = x.get("same_tokens_as_tinygpt_fp32") or {}
        if same:
            print(f"peers' sequences with the same {x['n_new']} greedy tokens as tinygpt fp32: "
                  + "; ".join(f"{k}: {n}/{x['B']}" for k, n in same.items()))
        for peer, why in x.get("skipped", {}).items():
            print(f"skipped {peer}: {why}")
        print()


def compute_bound_from(step_ms, Bs):
    """Smallest B from which every doubling costs >= 1.5x the step time: from there most of each added row's work
    is paid in time (a memory-bound step is nearly flat in B, a compute-bound one doubles). None if none does."""
    at = None
    for i in reversed(range(len(Bs) - 1)):
        if not (Bs[i + 1] == 2 * Bs[i] and step_ms[i + 1] >= 1.5 * step_ms[i]):
            break
        at = Bs[i]
    return at


def scaling(data, plot_path):
    for b in data["benchmarks"]:
        x = b["extra_info"].get("scaling")
        if not x:
            continue
        Bs, peak = x["B"], x.get("gemm_peak_gflop_s")
        kern = "; ".join(sorted({f"{k['internal_api']} {k['architecture']} x{k['num_threads']}" for g in x["gemm"]
                                 for k in g.get("blas", [])[:1]}))
        print(f"Batched decode scaling, {x['size']}, threads {x['threads']}, medians of {x['passes']} passes; "
              f"fp32 GEMM peak of this run (best of before/after, {kern or 'no BLAS info'}): {peak} GFLOP/s\n")
        print("| runner | B | aggregate tok/s | x B=1 | per-sequence tok/s | step ms | GFLOP/s | % of GEMM peak |")
        print("|---|---|---|---|---|---|---|---|")
        for name, c in x["runners"].items():
            for i, B in enumerate(Bs):
                pct = f"{100 * c['gflop_s'][i] / peak:.0f}" if peak else ""
                agg = c["agg_decode_tok_s"]
                print(f"| {name} | {B} | {agg[i]} | {agg[i] / agg[0]:.2f} | {c['per_seq_tok_s'][i]} | {c['step_ms'][i]} "
                      f"| {c['gflop_s'][i]} | {pct} |")
        print()
        for name, c in x["runners"].items():
            at = compute_bound_from(c["step_ms"], Bs)
            i = Bs.index(at) if at else len(Bs) - 1
            pct = f", {100 * c['gflop_s'][i] / peak:.0f}% of the GEMM peak there" if peak else ""
            print(f"- {name}: " + (f"compute-bound from B = {at} (each doubling from there costs >= 1.5x the "
                                   f"step time){pct}" if at else
                                   f"step time never grew >= 1.5x per doubling up to B = {Bs[-1]}{pct}"))
        print("\n(greedy tinygpt fp32 at B = 1 screens the LM head, so its FLOP count, taken for the full head, is "
              "an overstatement there.)")
        for peer, why in x.get("skipped", {}).items():
            print(f"skipped {peer}: {why}")
        print()
        draw(x, plot_path)


def draw(x, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("no plot: matplotlib is not installed (pip install matplotlib, or the `bench` extra)\n")
        return
    Bs = x["B"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, c in x["runners"].items():
        style = (dict(ls=":" if "split" in name else "--", marker="s") if name.startswith("llama.cpp") else
                 dict(ls="-", marker="o"))
        axes[0].plot(Bs, c["agg_decode_tok_s"], label=name, **style)
        axes[1].plot(Bs, c["per_seq_tok_s"], label=name, **style)
    for ax, title in zip(axes, ("aggregate decode tok/s", "per-sequence decode tok/s")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(Bs, [str(b) for b in Bs])
        ax.set_xlabel("sequences in the batch (B)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"GPT-2 {x['size']} batched greedy decode, {x['threads']} threads "
                 f"(fp32 GEMM peak {x.get('gemm_peak_gflop_s')} GFLOP/s)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"scaling plot: {path}\n")


if __name__ == "__main__":
    args = sys.argv[1:]
    plot = None
    if "--plot" in args:
        i = args.index("--plot")
        if i + 1 >= len(args):
            sys.exit("usage: python bench/report.py F.json [G.json ...] [--plot PNG]")
        plot = args[i + 1]
        del args[i:i + 2]
    if not args:
        sys.exit("usage: python bench/report.py F.json [G.json ...] [--plot PNG]")
    datas = []
    for f in args:
        try:
            datas.append(json.load(open(f)))
        except (OSError, ValueError) as e:
            sys.exit(f"report.py: error: {f}: {e}")
        if not isinstance(datas[-1], dict) or "benchmarks" not in datas[-1]:
            sys.exit(f"report.py: error: {f} is not a pytest-benchmark JSON (no 'benchmarks')")
    for k, data in enumerate(datas):
        main(data)
        batched(data)
        png = Path(args[k]).with_name(Path(args[k]).stem + "-scaling.png")
        if plot:
            png = Path(plot) if k == 0 else Path(plot).with_name(f"{Path(plot).stem}-{k}.png")
        scaling(data, png)
    across_runs(datas)
