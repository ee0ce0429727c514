"""Turn the benchmarks' JSON lines into benchmarks/RESULTS.md and benchmarks/results.png."""

from __future__ import annotations

from common import REPO

HERE = REPO / "benchmarks"


def _rows(results: dict, name: str, what: str) -> list[dict]:
    return [r for r in results.get(name, []) if r.get("what") == what or r.get(what)]


def _when(results: dict, name: str) -> str:
    """When and under what load a benchmark's own lines were measured (its machine line)."""
    m = next(iter(_rows(results, name, "machine")), None)
    if m is None:
        return ""
    return f"Measured {m['date']}, load average {m['load_average']}, {m['cpu']}."


def _fmt(x) -> str:
    return f"{x:,.0f}" if isinstance(x, (int, float)) and abs(x) >= 100 else str(x)


def targets(results: dict) -> list[tuple[str, str, float | None, float]]:
    """(issue item, figure, measured, target) for each target with a ratio to check."""
    out = []
    ratios = {
        r["glm_fp32_over"]: r["speedup"]
        for r in _rows(results, "train", "ratio")
        if "glm_fp32_over" in r
    }
    steps = {r["impl"]: r for r in _rows(results, "train", "train_step")}
    out.append(("2", "GLM fp32 / HF GPT-2 fp32 (training step)", ratios.get("hf_gpt2_fp32"), 2.0))
    out.append(("2", "GLM fp32 / HF BERT fp32 (training step)", ratios.get("hf_bert_fp32"), 1.3))
    out.append(("2", "GLM fp32 share of the fp32 matmul peak",
                steps.get("glm_fp32", {}).get("share_of_peak"), 0.8))  # fmt: skip
    skipped = {r["impl"]: r["why"] for r in _rows(results, "train", "skipped")}
    why = f" (not run: {skipped['glm_bf16']})" if "glm_bf16" in skipped else ""
    out.append(("2", "GLM bf16 share of the bf16 matmul peak" + why,
                steps.get("glm_bf16", {}).get("share_of_peak"), 0.35))  # fmt: skip
    for s in _rows(results, "generate", "summary"):
        p = s.get("precision", "fp32")
        out.append(("3", f"blank filling / HF generate, batch {s['batch']} ({p}, CPU time)",
                    s.get("ratio_cpu"), 1.5))  # fmt: skip
    data = [r for r in _rows(results, "data", "data") if r.get("data_over_gpu") is not None]
    token = next((r for r in data if r["mix"] == "token" and r["layout"] == "pad"), None)
    multi = next((r for r in data if r["mix"] == "multi" and r["layout"] == "pad"), None)
    for label, r in (("token-level, pad", token), ("50/25/25 mix, pad", multi)):
        out.append(("4", f"data tokens/s per core / 300 TFLOP/s GPU for glm-small ({label})",
                    None if r is None else r["data_over_gpu"], 5.0))  # fmt: skip
    prep = _best_prepare(results)
    out.append(("5", "prepare / raw encode_batch",
                None if prep is None else prep["ratio_prepare_over_raw"], 0.8))  # fmt: skip
    return out


def _best_prepare(results: dict) -> dict | None:
    """The prepare_speed row with the best ratio to raw encode_batch (rows of a ``--no-raw`` run
    have no ratio and are left out)."""
    rows = [r for r in _rows(results, "prepare", "prepare_speed") if "ratio_prepare_over_raw" in r]
    return max(rows, key=lambda r: r["ratio_prepare_over_raw"], default=None)


def write_report(results: dict, before: dict, after: dict, scale: int) -> None:
    lines = ["# Benchmark results", "",
             "Written by `make bench` (`benchmarks/run_all.py`); every figure is a ratio against a",
             "peer timed alternately in the same process. Raw JSON lines: `benchmarks/results/`.",
             "", "## Machine", "",
             f"- CPU: {before['cpu']}; flags: {', '.join(before['cpu_flags'])}",
             f"- native bf16: {before['cpu_native_bf16']}; torch threads: {before['threads']}; "
             f"torch {before['torch']}; GPU: {before['cuda'] or 'none'}",
             f"- this report: {before['date']} to {after['date']}; load average (1, 5, 15 min) "
             f"{before['load_average']} before, {after['load_average']} after; scale {scale}; "
             "each section names when its benchmark ran",
             f"- corpus (data, prepare and training batches): {before.get('corpus')}",
             ""]  # fmt: skip
    lines += ["## Targets (issue 13)", "", "| item | figure | measured | target | met |",
              "|---|---|---|---|---|"]  # fmt: skip
    for item, label, got, want in targets(results):
        met = "n/a" if got is None else ("yes" if got >= want else "**no**")
        lines.append(f"| {item} | {label} | {got if got is not None else 'not run'} | "
                     f"≥ {want} | {met} |")  # fmt: skip
    lines += [""]

    steps = _rows(results, "train", "train_step")
    peak = next(iter(_rows(results, "train", "matmul_peak")), None)
    if steps:
        lines += [
            "## Training step (glm-small shapes, batch 8, AdamW)",
            "",
            _when(results, "train"),
            "",
        ]
        if peak:
            lines.append(f"Matmul peaks ({peak['threads']} thread(s), 512x512): fp32 "
                         f"{peak['fp32_gflops']} GFLOP/s, bf16 {peak['bf16_gflops']} GFLOP/s.")  # fmt: skip
            lines.append("")
        linears = next(iter(_rows(results, "train", "training_linears")), None)
        if linears:
            lines += [f"GLM fp32's Linears: {'oneDNN' if linears['onednn'] else 'MKL'} "
                      f"(`blankfill.kernels` measured oneDNN {linears['onednn_over_mkl']}x MKL "
                      "on a training Linear).", ""]  # fmt: skip
        lines += ["| implementation | tokens/s (CPU time) | wall s/step | GFLOP/s | share of peak |",
                  "|---|---|---|---|---|"]  # fmt: skip
        for r in steps:
            lines.append(f"| {r['impl']} | {_fmt(r['tokens_per_s'])} | "
                         f"{r['wall_seconds_per_step']} | {r['gflops']} | "
                         f"{r['share_of_peak']} ({r['peak']}) |")  # fmt: skip
        lines += [""]
        ratios = {r["glm_fp32_over"]: r["speedup"] for r in _rows(results, "train", "ratio")
                  if "glm_fp32_over" in r}  # fmt: skip
        if "hf_gpt2_fp32_kept" in ratios:
            lines += ["GLM rows run with glibc's malloc keeping freed memory (what the trainer "
                      "does on the CPU, `blankfill.allocator`); the plain HF rows with malloc's "
                      "usual limits (as their users run them), the `_kept` rows like GLM. "
                      f"GLM fp32 over HF as its users run it: GPT-2 {ratios.get('hf_gpt2_fp32')}x, "
                      f"BERT {ratios.get('hf_bert_fp32')}x; like for like (`_kept`): GPT-2 "
                      f"{ratios['hf_gpt2_fp32_kept']}x, BERT {ratios.get('hf_bert_fp32_kept')}x.",
                      ""]  # fmt: skip
    curve = next(iter(_rows(results, "bf16", "bf16_curve")), None)
    if curve:
        lines += ["## bf16 vs fp32 loss curves", "", _when(results, "bf16"), "",
                  f"{curve['steps']} steps, {curve.get('seeds', 1)} dropout seed(s) per precision; "
                  f"final losses {curve['final_loss']}"
                  + (f" (mean, sd: {curve['final_loss_mean_sd']})" if "final_loss_mean_sd" in curve else "")
                  + f"; gap bf16-fp32 "
                  f"{curve['gap_bf16_vs_fp32']} vs seed-to-seed gap {curve['gap_seed_vs_fp32']} "
                  f"(ratio {curve['gap_ratio']}); bf16 speed-up in CPU time "
                  f"{curve['bf16_speedup_cpu']}x.", "", "![bf16 vs fp32](bf16_curve.png)", ""]  # fmt: skip
    gens = _rows(results, "generate", "summary")
    if gens:
        lines += ["## Decoding vs HF generate (glm-small, greedy, one thread)", "",
                  _when(results, "generate"), "",
                  "HF runs in fp32 with PyTorch's default CPU matmuls; blankfill's run on "
                  "oneDNN-packed weights (`blankfill.kernels`), in the precisions of "
                  "`blankfill.quantize` (bf16 and int8 can change fills: the last column counts "
                  "greedy fills equal to fp32's).", "",
                  "| batch | precision | blankfill tokens/s | HF tokens/s | ratio (wall) | "
                  "ratio (CPU time) | fills equal to fp32 | share of the fp32 matmul floor |",
                  "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for s in gens:
            lines.append(f"| {s['batch']} | {s.get('precision', 'fp32')} | "
                         f"{s['blankfill_tokens_per_s']} | {s['hf_tokens_per_s']} | "
                         f"{s['ratio_wall']} | {s['ratio_cpu']} | "
                         f"{s.get('fills_equal_fp32', '')} | "
                         f"{s.get('share_of_fp32_matmul_floor', '')} |")  # fmt: skip
        floors = _rows(results, "generate", "matmul_floor")
        if floors:
            lines += ["", "fp32 matmul floor (one step's matmuls alone, every weight once, no "
                      "attention, prompt or sampling): " + "; ".join(
                          f"batch {f['batch']}: {_fmt(f['tokens_per_s'])} tokens/s = "
                          f"{f['over_hf']}x HF" for f in floors) + "."]  # fmt: skip
        lines += [""]
    data = _rows(results, "data", "data")
    if data:
        gpu = next(iter(_rows(results, "data", "model_gpu_estimate")), {})
        lines += ["## Data pipeline (one core, batch 16)", "", _when(results, "data"), "",
                  f"Peer: glm-small on one GPU at {gpu.get('assumed_tflops')} TFLOP/s consumes "
                  f"{_fmt(gpu.get('tokens_per_s'))} tokens/s (6N + attention FLOPs per token).",
                  "", "| objectives | layout | seq | tokens/s per core (CPU time) | wall | "
                  "packing efficiency | / GPU |", "|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in data:
            lines.append(f"| {r['mix']} | {r['layout']} | {r['seq_len']} | "
                         f"{_fmt(r['tokens_per_s'])} | {_fmt(r['tokens_per_s_wall'])} | "
                         f"{r['packing_efficiency']} | {r.get('data_over_gpu', '')} |")  # fmt: skip
        lines += [""]
    waits = _rows(results, "loader", "loader_wait")
    if waits:
        lines += ["## Loader at a simulated GPU rate (glm-small batches, seq 512, batch 16)", "",
                  _when(results, "loader"), "",
                  "| GPU TFLOP/s (tokens/s) | workers | repeat | steps | waits (> 1 ms) | "
                  "median wait ms | stall share | tokens/s |",
                  "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in waits:
            lines.append(f"| {r.get('gpu_tflops', 300)} ({_fmt(r['gpu_tokens_per_s'])}) | "
                         f"{r['num_workers']} | {r['repeat']} | {r['steps']} | {r['waits']} | "
                         f"{r.get('median_wait_ms', '')} | {r['stall']} | "
                         f"{_fmt(r['tokens_per_s'])} |")  # fmt: skip
        lines += [""]
    prep = _best_prepare(results)
    if prep:
        lines += ["## prepare vs raw tokenizers encode_batch", "", _when(results, "prepare"), "",
                  f"{prep['files']} files, {prep['input_mb']} MB: prepare "
                  f"{prep['prepare_mb_per_s']} MB/s, raw encode_batch {prep['raw_mb_per_s']} MB/s, "
                  f"ratio {prep['ratio_prepare_over_raw']}"
                  f" (--workers {prep.get('workers', 1)}, peak PSS {prep.get('peak_rss_mb')} MB"
                  f" vs raw {prep.get('raw_peak_rss_mb')} MB).", ""]  # fmt: skip
    lines += ["![ratios against targets](results.png)", ""]
    (HERE / "RESULTS.md").write_text("\n".join(lines))
    plot(results)


def plot(results: dict) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    rows = [(label, got / want) for _, label, got, want in targets(results) if got is not None]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(rows) + 1.2))
    labels, values = zip(*rows, strict=True)
    colors = ["tab:green" if v >= 1 else "tab:red" for v in values]
    ax.barh(range(len(rows)), values, color=colors)
    ax.axvline(1.0, color="black", lw=1)
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("measured / target (>= 1: met)")
    ax.set_title("issue 13 targets on this machine")
    fig.tight_layout()
    fig.savefig(HERE / "results.png", dpi=100)
