#!/usr/bin/python3
"""Turns attention_bench's JSON output into docs/PERFORMANCE.md.

    build/bin/attention_bench --benchmark_repetitions=3 \
        --benchmark_report_aggregates_only=true \
        --benchmark_out=build/bench.json --benchmark_out_format=json
    /usr/bin/python3 bench/perf_table.py build/bench.json > docs/PERFORMANCE.md

(`make bench` then `make perf-doc` do both.) Every figure is the median of
the repetitions of one run (a benchmark run once, like the plain engine at
S=2048, reports its single run). Ratios are between rows of the same run.
The machine section is `lscpu` on the machine running this script, which
must be the one that ran the bench (the JSON's host name and date are
printed next to it).
"""

import argparse
import json
import re
import subprocess
import sys

METHODS = ["none", "sinusoidal", "learned", "rope", "transformer_xl", "shaw",
           "alibi", "da_transformer"]
FAST_TARGET_METHODS = {"none", "alibi", "rope"}
MIB = 1 << 20
# The PyTorch 1.13 naive figures on this machine (not installed here).
PYTORCH_MS = {1024: 98.0, 4096: 1700.0}

UNIT_TO_MS = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}


def parse_name(run_name):
    """'BM_FastAttend/method:0/S:128/causal:0/threads:1/real_time' ->
    ('BM_FastAttend', {'method': 0, 'S': 128, ...})."""
    parts = run_name.split("/")
    args = {}
    for part in parts[1:]:
        if ":" in part:
            key, value = part.split(":", 1)
            args[key] = int(value)
    return parts[0], args


def load_runs(path):
    """Median (or single-run) entries keyed by (family, args tuple)."""
    with open(path) as f:
        data = json.load(f)
    runs = {}
    for bench in data["benchmarks"]:
        if bench.get("error_occurred"):
            family, args = parse_name(bench["run_name"])
            runs[(family, tuple(sorted(args.items())))] = {"error": bench.get("error_message")}
            continue
        aggregate = bench.get("aggregate_name")
        if bench.get("run_type") == "aggregate" and aggregate != "median":
            continue
        family, args = parse_name(bench["run_name"])
        key = (family, tuple(sorted(args.items())))
        if bench.get("run_type") == "iteration" and key in runs:
            continue  # Without aggregates: keep the first repetition.
        runs[key] = {
            "ms": bench["real_time"] * UNIT_TO_MS[bench["time_unit"]],
            "flops": bench.get("FLOP/s"),
            "extra_bytes": bench.get("extra_bytes"),
            "label": bench.get("label", ""),
            "repetitions": bench.get("repetitions", 1) if aggregate else 1,
        }
    return data["context"], runs


def key(family, **args):
    return (family, tuple(sorted(args.items())))


def lscpu_summary():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return ["(lscpu not available)"]
    wanted = ["Model name", "CPU(s)", "Thread(s) per core", "Core(s) per socket",
              "Hypervisor vendor", "L1d cache", "L2 cache", "L3 cache"]
    fields = {}
    for line in out.splitlines():
        if ":" in line:
            name, value = line.split(":", 1)
            fields[name.strip()] = value.strip()
    lines = [f"{name}: {fields[name]}" for name in wanted if name in fields]
    flags = fields.get("Flags", "").split()
    simd = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni") if f in flags]
    lines.append("SIMD flags: " + " ".join(simd))
    return lines


def parse_memory_log(path):
    """[(method, extra MiB, output MiB)] from FastEngineMemoryTest's lines
    'none: peak heap growth 4459640 B, output 4194304 B, extra 0.253 MiB'."""
    pattern = re.compile(r"^(\w+): peak heap growth (-?\d+) B, output (\d+) B, extra (\S+) MiB")
    rows = []
    with open(path) as f:
        for line in f:
            m = pattern.match(line)
            if m:
                rows.append((m.group(1), float(m.group(4)), int(m.group(3)) / MIB))
    return rows


def fmt(value, digits=1):
    return "-" if value is None else f"{value:.{digits}f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", help="attention_bench --benchmark_out JSON")
    parser.add_argument("--command", default=(
        "make bench && make perf-doc   # i.e. build/bin/attention_bench "
        "--benchmark_repetitions=3 --benchmark_report_aggregates_only=true "
        "--benchmark_out=build/bench.json --benchmark_out_format=json; "
        "/usr/bin/python3 bench/perf_table.py build/bench.json > docs/PERFORMANCE.md"))
    parser.add_argument("--memory-log", help="output of kernels_fast_engine_test "
                        "--gtest_filter='*Memory*' (the S=16384 measurement)")
    parser.add_argument("--note", action="append", default=[],
                        help="a paragraph to add under the machine section")
    opts = parser.parse_args()
    context, runs = load_runs(opts.json)

    def run(family, **args):
        return runs.get(key(family, **args))

    def plain(method, s, causal, threads):
        for family in ("BM_PlainAttend", "BM_PlainAttendOnce"):
            r = run(family, method=method, S=s, causal=causal, threads=threads)
            if r and "ms" in r:
                return r
        return None

    def ceiling(s, threads, pv=0):
        r = run("BM_MatmulCeiling", S=s, threads=threads, pv=pv)
        return r if r and "ms" in r else None

    out = []
    w = out.append
    w("# Performance of the attention engines")
    w("")
    w("Generated by `bench/perf_table.py` from one run of `build/bin/attention_bench`; "
      "do not edit by hand, regenerate it (command below).")
    w("")
    w("## Machine and run")
    w("")
    w("```")
    w(f"host {context.get('host_name')}, run {context.get('date')}, "
      f"{context.get('num_cpus')} CPUs at {context.get('mhz_per_cpu')} MHz, "
      f"load average at start {', '.join(f'{x:.2f}' for x in context.get('load_avg', []))}")
    w("lscpu:")
    for line in lscpu_summary():
        w("  " + line)
    w("```")
    w("")
    for note in opts.note:
        w(note)
        w("")
    w("Command:")
    w("")
    w("```sh")
    w(opts.command)
    w("```")
    w("")
    w("Shape: B=1, H=8, D=Dv=64, Sq=Sk=S, float32; the inputs of `bench/attention_bench.cc` "
      "(MakeArgs: q, k, v ~ N(0, 1); Shaw K=64; Transformer-XL d_rel=64; the absolute "
      "methods project d_model=512 inputs). Times are wall-clock medians of 3 repetitions "
      "(ms per call; each repetition runs as many calls as fit in 0.5 s). The plain engine "
      "runs the full grid up to S=512 and one call per configuration at S=2048 (it takes "
      "seconds per call there).")
    w("")
    w("- **GFLOP/s** = 4·H·D·(unmasked query-key pairs) / time: QK^T and PV only, the same "
      "count for every method (Shaw's relative terms, Transformer-XL's position term and the "
      "absolute methods' input projections are extra work not counted). Causal counts "
      "S(S+1)/2 pairs.")
    w("- **% of ceiling** = GFLOP/s / the GFLOP/s of one plain `dnnl::matmul` "
      "[S,64]x[64,S] fp32 on the same threads in the same run.")
    w("- **speed-up** = plain engine time / fast engine time, same configuration, same run.")
    w("- **extra MiB** = peak heap the call adds beyond its inputs and output, measured by "
      "malloc interposition (`tests/testing/heap_peak.h`: every malloc/free of every thread; "
      "thread stacks not counted), largest over the timed calls.")
    w("")

    # Ceiling table.
    w("## Ceiling: one dnnl::matmul")
    w("")
    w("| S | threads | [S,64]x[64,S] GFLOP/s | [S,S]x[S,64] GFLOP/s | oneDNN implementation |")
    w("|---:|---:|---:|---:|---|")
    sizes = sorted({dict(k[1]).get("S") for k in runs if k[0] == "BM_MatmulCeiling"})
    for s in sizes:
        for threads in (1, 2):
            qk, pv = ceiling(s, threads, 0), ceiling(s, threads, 1)
            if not qk and not pv:
                continue
            w(f"| {s} | {threads} | {fmt(qk and qk['flops'] / 1e9)} | "
              f"{fmt(pv and pv['flops'] / 1e9)} | {(qk or pv)['label']} |")
    w("")

    # Main table.
    w("## Every method")
    w("")
    w("| method | S | causal | threads | fast ms | GFLOP/s | % of ceiling | plain ms | "
      "speed-up | extra MiB |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    fast_keys = sorted((dict(k[1]) for k in runs if k[0] == "BM_FastAttend"),
                       key=lambda a: (a["method"], a["S"], a["causal"], a["threads"]))
    for a in fast_keys:
        r = run("BM_FastAttend", **a)
        name = METHODS[a["method"]]
        if "error" in r:
            w(f"| {name} | {a['S']} | {a['causal']} | {a['threads']} | error: {r['error']} "
              "| | | | | |")
            continue
        c = ceiling(a["S"], a["threads"])
        p = plain(a["method"], a["S"], a["causal"], a["threads"])
        gflops = r["flops"] / 1e9
        w(f"| {name} | {a['S']} | {a['causal']} | {a['threads']} | {fmt(r['ms'], 2)} | "
          f"{fmt(gflops)} | {fmt(c and 100 * r['flops'] / c['flops'], 0)} | "
          f"{fmt(p and p['ms'], 2)} | {fmt(p and p['ms'] / r['ms'])} | "
          f"{fmt(r['extra_bytes'] / MIB, 2)} |")
    w("")

    # Targets.
    w("## Targets of the issue")
    w("")
    w("Measured at 2 threads, non-causal unless stated, from the table above.")
    w("")
    w("| target | measured | met |")
    w("|---|---|---|")

    def fast(method, s, causal=0, threads=2):
        r = run("BM_FastAttend", method=METHODS.index(method), S=s, causal=causal,
                threads=threads)
        return r if r and "ms" in r else None

    def verdict(ok):
        return "yes" if ok else "**no**"

    big = [s for s in (1024, 2048, 4096, 8192)]
    rows = []
    for method in METHODS:
        for s in big:
            r, c = fast(method, s), ceiling(s, 2)
            if r and c:
                rows.append((method, s, r["flops"] / 1e9, r["flops"] / c["flops"]))
    strong = [x for x in rows if x[0] in FAST_TARGET_METHODS]
    if strong:
        worst_g = min(strong, key=lambda x: x[2])
        worst_f = min(strong, key=lambda x: x[3])
        w(f"| none/alibi/rope, S>=1024: >= 110 GFLOP/s | lowest {worst_g[2]:.1f} "
          f"({worst_g[0]}, S={worst_g[1]}) | {verdict(worst_g[2] >= 110)} |")
        w(f"| none/alibi/rope, S>=1024: >= 75% of the ceiling | lowest {100 * worst_f[3]:.0f}% "
          f"({worst_f[0]}, S={worst_f[1]}) | {verdict(worst_f[3] >= 0.75)} |")
    for s, torch_ms in sorted(PYTORCH_MS.items()):
        times = [(m, fast(m, s)) for m in sorted(FAST_TARGET_METHODS)]
        times = [(m, r["ms"]) for m, r in times if r]
        if not times:
            continue
        slowest = max(times, key=lambda x: x[1])
        need = " (target: >= 4x)" if s == 4096 else ""
        w(f"| none/alibi/rope, S={s}: vs PyTorch 1.13 naive {torch_ms:g} ms (issue's figure){need} "
          f"| slowest {slowest[1]:.1f} ms ({slowest[0]}): {torch_ms / slowest[1]:.1f}x "
          f"| {verdict(torch_ms / slowest[1] >= 4) if s == 4096 else 'n/a'} |")
    others = [x for x in rows if x[0] not in FAST_TARGET_METHODS]
    if others:
        worst = min(others, key=lambda x: x[3])
        w(f"| other five methods, S>=1024: >= 60% of the ceiling | lowest {100 * worst[3]:.0f}% "
          f"({worst[0]}, S={worst[1]}) | {verdict(worst[3] >= 0.60)} |")
    ratios = []
    for method in METHODS:
        for s in (2048, 8192):
            for threads in (1, 2):
                nc, ca = fast(method, s, 0, threads), fast(method, s, 1, threads)
                if nc and ca:
                    ratios.append((ca["ms"] / nc["ms"], method, s, threads))
    if ratios:
        worst = max(ratios)
        w(f"| causal <= 0.6x non-causal time (S=2048, 8192; 1 and 2 threads) | highest "
          f"{worst[0]:.2f}x ({worst[1]}, S={worst[2]}, {worst[3]} threads) "
          f"| {verdict(worst[0] <= 0.6)} |")
    extras = [(r["extra_bytes"], METHODS[dict(k[1])["method"]], dict(k[1])["S"])
              for k, r in runs.items() if k[0] == "BM_FastAttend" and "ms" in r]
    if extras:
        worst = max(extras)
        w(f"| < 64 MiB extra memory (bench, S<=8192, H=8) | largest {worst[0] / MIB:.2f} MiB "
          f"({worst[1]}, S={worst[2]}) | {verdict(worst[0] < 64 * MIB)} |")
    memory = parse_memory_log(opts.memory_log) if opts.memory_log else []
    if memory:
        worst = max(memory, key=lambda x: x[1])
        w(f"| < 64 MiB extra memory at S=16384, every method (B=1 H=1 D=64, "
          f"FastEngineMemoryTest) | largest {worst[1]:.2f} MiB ({worst[0]}) "
          f"| {verdict(worst[1] < 64)} |")
    else:
        w("| < 64 MiB extra memory at S=16384, every method | not measured in this run "
          "(pass --memory-log) | n/a |")
    for threads in (1, 2):
        small = [(fast(m, 128, 0, threads), m) for m in METHODS]
        small = [(r["ms"], m) for r, m in small if r]
        if small:
            worst = max(small)
            met = verdict(worst[0] <= 0.5) if threads == 2 else "n/a (1 thread, for reference)"
            w(f"| B=1 H=8 S=128 <= 0.5 ms per call ({threads} thread{'s' if threads > 1 else ''}, "
              f"every method) | slowest {worst[0]:.3f} ms ({worst[1]}) | {met} |")
    w("")
    if memory:
        w("## Memory at S=16384")
        w("")
        w("`build/bin/kernels_fast_engine_test --gtest_filter='*Memory*'` (B=1, H=1, "
          "S=16384, D=64, 2 threads, probs not requested): peak heap growth during one "
          "Attend call minus its output, inputs allocated before the measurement starts.")
        w("")
        w("| method | extra MiB | output MiB |")
        w("|---|---:|---:|")
        for method, extra, output in memory:
            w(f"| {method} | {extra:.2f} | {output:.2f} |")
        w("")
    sys.stdout.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
