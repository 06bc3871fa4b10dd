"""Turn a pytest-benchmark JSON (pytest bench/ --benchmark-only --benchmark-json=F) into Markdown tables:
end-to-end prefill/decode tokens/s with ratios against the peers in the same run, peak RSS, and kernels.

usage: python bench/report.py F.json [G.json ...]
With several files (e.g. round robins run in separate processes) it then prints each tinygpt runner's decode
ratio against every peer as the median over the runs, with the smallest and largest.
"""
import json
import statistics
import sys


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
    rss = [(n, x) for n, x, _ in rows if "peak_rss_mb" in x]
    if rss:
        print("| peak RSS (CLI run, converted model) | MiB | interpreter MiB | weights MiB | budget MiB |")
        print("|---|---|---|---|---|")
        for n, x in rss:
            print(f"| {x['backend']} {x['dtype']} | {x['peak_rss_mb']} | {x['interpreter_mb']} | {x['weights_mb']} "
                  f"| {x['budget_mb']} |")
        print()
    kern = [(n, x, t) for n, x, t in rows if "kernel" in x]
    if kern:
        print("| kernel | median | GFLOP/s | GB/s | MB/s |\n|---|---|---|---|---|")
        for n, x, t in kern:
            print(f"| {n} | {t * 1e3:.3f} ms | {x.get('gflop_s', '')} | {x.get('gb_s', '')} | {x.get('mb_s', '')} |")
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


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python bench/report.py F.json [G.json ...]")
    datas = [json.load(open(f)) for f in sys.argv[1:]]
    for data in datas:
        main(data)
    across_runs(datas)
