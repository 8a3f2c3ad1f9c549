"""kidrr bench scale reports: a Markdown table and a log-log plot of latency against gallery size."""
from __future__ import annotations

import os

from kidrr.fileio import write_figure


def _rows(run: dict):
    for n, by_method in sorted(run["sizes"].items(), key=lambda kv: int(kv[0])):
        for method, res in by_method.items():
            yield int(n), method, res


def _parts(c: dict) -> str:
    b = c.get("breakdown_p50_ms")
    if not b:
        return f"- / {c['first_stage_p50_ms']:.2f} / - / -"
    return " / ".join(f"{b[k]:.1f}" for k in ("encode", "first_stage", "gather", "rerank"))


def markdown(run: dict) -> str:
    lines = [f"# kidrr bench scale (R={run['regions']}, D={run['dim']}, {run['locals_dtype']} locals, "
             f"{run['queries']} text queries, {run['threads']} threads)", "",
             f"Load average before/after: {run['load_before'][0]:.1f} / {run['load_after'][0]:.1f} "
             f"on {os.cpu_count()} cores.", ""]
    p = run.get("precision")
    if p:
        lines += [f"Locals precision on the synthetic test set ({p['folds']} fold(s) of {p['images_per_fold']} images, "
                  f"exhaustive): rSum fp32 {p['rsum']['fp32']:.2f}, fp16 {p['rsum']['fp16']:.2f} "
                  f"(delta {p['delta_fp16']:+.2f}), int8 {p['rsum']['int8']:.2f} (delta {p['delta_int8']:+.2f}).", ""]
    lines += ["| items | index | build s | add 10k s | disk GiB | open ms | anon RSS MB | first stage @k' | "
              "p50 ms | p99 ms | batched p50 ms/q | p50 ms: encode / first stage / gather / rerank | top-10 overlap vs exact | "
              "recall@10 vs exhaustive |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for n, method, res in _rows(run):
        if res.get("status") != "ok":
            lines.append(f"| {n:,} | {method} | failed: {res.get('reason')} |")
            continue
        for name, c in res["configs"].items():
            def f(v, fmt="{:.1f}"):
                return "-" if v is None else fmt.format(v)
            lines.append(f"| {n:,} | {method} | {res['build_s']:.1f} | {res['add_10k_s']:.2f} | "
                         f"{res['disk_bytes'] / 2**30:.2f} | {res['open_ms']:.1f} | {res['rss_anon_mb']:.0f} | {name} | "
                         f"{c['single_p50_ms']:.1f} | {c['single_p99_ms']:.1f} | {f(c['batched_p50_ms_per_query'])} | "
                         f"{_parts(c)} | {f(c.get('overlap_exact'), '{:.3f}')} | "
                         f"{f(c.get('recall_vs_exhaustive'), '{:.3f}')} |")
    return "\n".join(lines + search_lines(run)) + "\n"


def search_lines(run: dict) -> list:
    """The search-feature rows: filtered text search, query by id, duplicate groups."""
    rows, dups = [], []
    for n, method, res in _rows(run):
        found = res.get("search") if res.get("status") == "ok" else None
        if not found:
            continue
        for name, r in found["rows"].items():
            matches = "-" if r["matches"] is None else f"{r['matches']:,}"
            rows.append(f"| {n:,} | {method} | {name} | {matches} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
                        f"{r['overlap_mean']:.3f} | {100 * r['equal_fraction']:.0f}% |")
        if "duplicates" in found:
            d = found["duplicates"]
            dups.append(f"Duplicate groups over {d['items']:,} items ({method}): {d['seconds']:.1f} s, {d['groups']:,} "
                        f"groups holding {d['items_in_groups']:,} items (threshold 0.95, 8 neighbours).")
    if not rows:
        return []
    kp = next(res["search"]["shortlist"] for _, _, res in _rows(run) if res.get("search"))
    return ["", f"Search features (k=10, k'={kp} for text; {run['queries']} queries each; filtered text search against "
                f"a brute-force filtered reference: numpy over every matching item's global, the best k' reranked; "
                f"query by id against the exact nearest globals; 'equal': top-10 overlap >= 0.95):", "",
            "| items | index | search | matching items | p50 ms | p99 ms | mean top-10 overlap | queries equal |",
            "|---|---|---|---|---|---|---|---|", *rows, "", *dups]


def plot_search(run: dict, path: str) -> str | None:
    """p50 of filtered text search and query by id against gallery size, with the issue's targets."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    series = {}
    for n, method, res in _rows(run):
        for name, r in ((res.get("search") or {}).get("rows") or {}).items():
            series.setdefault(f"{name} ({method})", {})[n] = (r["p50_ms"], r["p99_ms"])
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, pts in sorted(series.items()):
        xs = sorted(pts)
        line, = ax.plot(xs, [pts[x][0] for x in xs], marker="o", label=f"{label} p50")
        ax.plot(xs, [pts[x][1] for x in xs], marker="x", linestyle=":", color=line.get_color(), label=f"{label} p99")
    for y, what in ((25, "target: filtered p50"), (15, "target: by id p50")):
        ax.axhline(y, color="grey", linewidth=0.8, linestyle="--")
        ax.text(0.01, y, what, transform=ax.get_yaxis_transform(), fontsize=7, va="bottom", color="grey")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("gallery size (items)")
    ax.set_ylabel("latency, ms (one query)")
    ax.set_title("filtered text search and query by stored item")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    write_figure(fig, path)
    plt.close(fig)
    return path


def plot(run: dict, path: str) -> str | None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    series = {}
    for n, method, res in _rows(run):
        for name, c in res.get("configs", {}).items():
            stage, kp = name.split("@")
            label = f"{'exact' if stage == 'exact' else method} first stage, k'={kp}"
            series.setdefault(label, {})[n] = c["single_p50_ms"]
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, pts in sorted(series.items()):
        xs = sorted(pts)
        ax.plot(xs, [pts[x] for x in xs], marker="o", linestyle="--" if label.startswith("exact") else "-",
                label=label)
    ax.axhline(20, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("gallery size (items)")
    ax.set_ylabel("text query latency p50, ms (one query)")
    ax.set_title(f"two-stage search, R={run['regions']}, D={run['dim']}, {run['locals_dtype']} locals")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    write_figure(fig, path)
    plt.close(fig)
    return path
