"""Markdown of the benchmark reports: the matrix (``matrix.md``, with RecBole side by side when
compared) and the scale runs. Pure functions of the JSON the runner writes, so a report can be
re-rendered: ``python -m benchmarks.runner render <out>/matrix.json``."""

from __future__ import annotations

import time
from typing import Any


def _f(v: Any, nd: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{nd}f}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def render_markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    v = m["versions"]
    lines = [
        "# Benchmarks",
        "",
        f"Written by `{report['command']}` on {report['date']} from `{report['matrix']}`.",
        "",
        f"- machine: {m['cpu']}, {m['cores']} cores (torch threads {m['torch_threads']}), "
        f"{m['memory_gb']} GiB RAM, GPU: {m['gpu'] or 'none'}",
        f"- load average (1, 5, 15 min) at start {m['load_avg']}, at end {report['load_avg_end']} "
        "(the CPU is shared; a load above the core count inflates every time below)",
        "- versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val),
        f"- environment: {report.get('env') or {}}",
        f"- fp32 matmul peak: {report['matmul_peak']['gflops']} GFLOP/s "
        f"(torch.mm of two {report['matmul_peak']['n']}² matrices, best of 5)",
        "",
        "## Results (test split, best validation checkpoint)",
        "",
        "| entry | NDCG@10 | Recall@10 | MRR@10 | epochs | train s/epoch | samples/s | eval s (test pass) "
        "| eval users/s | score GFLOP/s (% peak) | peak RSS MiB | peak CUDA MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        if r.get("status") != "ok":
            lines.append(
                f"| {r['name']} | {r.get('status')}: {str(r.get('error', ''))[:80]!r} |" + " |" * 10
            )
            continue
        t, e, te = r["timing"], r["eval"], r["test"]
        frac = e.get("score_local_peak_fraction", e.get("score_peak_fraction"))
        gf = f"{e['score_gflops']} ({100 * frac:.0f}%)" if frac is not None else "–"
        lines.append(
            f"| {r['name']} | {_f(te.get('ndcg@10'))} | {_f(te.get('recall@10'))} | {_f(te.get('mrr@10'))} "
            f"| {t.get('epochs')} | {_f(t.get('train_s_per_epoch'), 3)} | {_f(r.get('train_throughput'), 0)} "
            f"| {_f(e['full_pass_s'], 3)} | {_f(e['users_per_s'], 0)} | {gf} | {_f(r['peak_rss_mb'], 0)} "
            f"| {_f(r.get('peak_cuda_mb'), 0)} |"
        )
    lines += [
        "",
        "Columns: *train s/epoch* is the median training time of an epoch without its validation "
        "pass; *samples/s* counts training pairs (MF, NeuMF), user rows (Mult-VAE) or sequence "
        "windows (SASRec) per second; *eval s* is a full-ranking pass over every test user (score "
        "all items, mask seen items, top-k, metrics), best of 3; *score GFLOP/s* is the score "
        "computation alone for MF, a `(B, d) @ (d, I)` matmul, against the fp32 peak (measured again "
        "in the entry's process right after, since the load drifts); *peak RSS* "
        "is the entry's process (`VmHWM`: its own high-water mark), one process per entry. Closed-form models (EASE, "
        "popularity) have 0 epochs.",
        "",
    ]
    cmp_rows = [r for r in report["results"] if isinstance(r.get("recbole"), dict)]
    if cmp_rows:
        lines += render_comparison(cmp_rows)
    if report["skipped"]:
        lines += (
            ["## Skipped", ""] + [f"- {s['name']}: {s['reason']}" for s in report["skipped"]] + [""]
        )
    lines += ["## Commands", ""]
    for r in report["results"]:
        lines.append(f"- {r['name']}: `python -m recsys.cli.train {' '.join(r['overrides'])}`")
    if report.get("notes"):
        lines += ["", "## Notes", "", str(report["notes"]).strip()]
    return "\n".join(lines) + "\n"


def render_comparison(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "## Side by side with RecBole 1.2.1 (same split, same hyper-parameters)",
        "",
        "Ratios are RecBole / recsys (above 1: recsys is faster or smaller). Metric differences "
        "are recsys − RecBole on the test split.",
        "",
        "| entry | RecBole model | epochs (ours / RecBole) | s/epoch ours | s/epoch RecBole | epoch-time ratio (CPU time) "
        "| eval s ours | eval s RecBole | eval-time ratio | RSS ratio | NDCG@10 ours / RecBole (Δ) "
        "| Recall@10 ours / RecBole (Δ) | MRR@10 ours / RecBole (Δ) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        rb = r["recbole"]
        if rb.get("status") != "ok":
            lines.append(
                f"| {r['name']} | failed: {str(rb.get('error', ''))[:100]!r} |" + " |" * 11
            )
            continue
        c = rb["ratios"]
        ours_cpu, rb_cpu = r["timing"].get("train_cpu_s_per_epoch"), rb.get("train_cpu_s_per_epoch")
        cpu = (
            f" (CPU s {ours_cpu:.3f} / {rb_cpu:.3f}: {rb_cpu / ours_cpu:.1f}×)"
            if ours_cpu and rb_cpu
            else ""
        )
        ours_vc, rb_vc = r["timing"].get("val_cpu_s_per_epoch"), rb.get("valid_cpu_s_mean")
        eval_cpu = (
            f" (val CPU s {ours_vc:.3f} / {rb_vc:.3f}: {rb_vc / ours_vc:.1f}×)"
            if ours_vc and rb_vc
            else ""
        )
        cells = []
        for k in ("ndcg@10", "recall@10", "mrr@10"):
            a, b = r["test"].get(k), rb["test"].get(k)
            cells.append(
                f"{_f(a)} / {_f(b)} ({a - b:+.4f})" if a is not None and b is not None else "–"
            )
        lines.append(
            f"| {r['name']} | {rb['model']} | {r['timing'].get('epochs')} / {rb.get('epochs_run')} "
            f"| {_f(r['timing'].get('train_s_per_epoch'), 3)} | {_f(rb.get('train_s_per_epoch'), 3)} "
            f"| {_f(c.get('epoch_time'), 1)}×{cpu} | {_f(r['eval']['full_pass_s'], 3)} "
            f"| {_f(rb.get('eval_s'), 3)} | {_f(c.get('eval_time'), 1)}×{eval_cpu} | {_f(c.get('rss'), 1)}× | "
            + " | ".join(cells)
            + " |"
        )
    notes = sorted({n for r in rows for n in r["recbole"].get("notes", [])})
    lines += [""] + [f"- {n}" for n in notes] + [""]
    return lines


# -- scale ------------------------------------------------------------------------------------
def render_scale(info: dict[str, Any], rows: list[dict[str, Any]], argv: list[str]) -> str:
    lines = [
        "# Scaling: load, split, one MF epoch and full-ranking evaluation",
        "",
        f"Written by `python -m benchmarks.runner scale {' '.join(argv)}` on {time.strftime('%Y-%m-%d %H:%M %Z')}.",
        f"Machine: {info['cpu']}, {info['cores']} cores, {info['memory_gb']} GiB RAM; "
        f"load average at start {info['load_avg']} (the CPU is shared with other jobs).",
        "",
        "Each size runs in its own process through the normal path (`recsys.training.train.train`): the "
        "synthetic source (`benchmarks.runner.scale.scale_source`, MovieLens-1M / MovieLens-20M / Netflix shapes),"
        " the data pipeline (encode ids, leave-one-out split by time), one MF-BPR epoch (batch "
        "131,072 pairs, d = 64), a validation pass during fit, then validation and test passes on "
        "the best checkpoint (full ranking over every item, seen items masked, users in chunks of "
        "4,096: no users × items matrix is ever built). *generate* is the synthetic source alone "
        "(in memory, no file parsing); *load + split* includes it plus id encoding, the split and "
        "its leakage audit.",
        "",
        "| size | users | items | train events | generate s (CPU s) | load + split s (CPU s) "
        "| RSS after load MiB | peak RSS load MiB | MF epoch s (CPU s) | peak RSS after epoch MiB "
        "| val pass s | test pass s | whole run s (CPU s) | peak RSS MiB | load avg at start |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r.get("status") != "ok":
            lines.append(
                f"| {r['size']} | failed: {str(r.get('error', ''))[-120:]!r} |" + " |" * 13
            )
            continue
        d = r["data"]
        lines.append(
            f"| {r['size']} | {d['n_users']:,} | {d['n_items']:,} | {d['n_train']:,} "
            f"| {_f(r.get('source_s'), 1)} ({_f(r.get('source_cpu_s'), 1)}) "
            f"| {_f(r['load_split_s'], 1)} ({_f(r.get('load_split_cpu_s'), 1)}) "
            f"| {_f(r.get('rss_after_load_mb'), 0)} | {_f(r['load_split_peak_rss_mb'], 0)} "
            f"| {_f(r['train_epoch_s'], 1)} ({_f(r.get('train_epoch_cpu_s'), 1)}) "
            f"| {_f(r.get('peak_rss_after_train_mb'), 0)} | {_f(r['val_pass_s'], 1)} "
            f"| {_f(r['test_pass_s'], 1)} | {_f(r['process_wall_s'], 1)} ({_f(r.get('process_cpu_s'), 1)}) "
            f"| {_f(r['peak_rss_mb'], 0)} | {r['load_avg_start']} |"
        )
    lines += ["", "Commands (one process per size):", ""]
    for r in rows:
        lines.append(f"- {r['size']}: `python -m recsys.cli.train {' '.join(r['overrides'])}`")
    return "\n".join(lines) + "\n"
