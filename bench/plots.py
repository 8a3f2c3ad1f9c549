"""PNG plots (matplotlib, Agg): latency against batch size per target; recall against speed for two-stage."""
from __future__ import annotations

import os

from kidrr.fileio import write_figure

from .report import OPS


def latency_plot(results: dict, path: str) -> bool:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ok = [(label, r) for label, r in results.items() if r.get("status") == "ok"]
    if not ok:
        return False
    fig, axes = plt.subplots(1, len(OPS), figsize=(5 * len(OPS), 4))
    for ax, (op, name, _) in zip(axes, OPS):
        for label, r in ok:
            points = sorted((int(b), s["p50_ms"], s["p90_ms"]) for b, s in r["latency"][op].items())
            if points:
                xs, p50, p90 = zip(*points)
                line, = ax.plot(xs, p50, marker="o", label=label)
                ax.fill_between(xs, p50, p90, color=line.get_color(), alpha=0.15)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size b")
        ax.set_ylabel("latency per call, ms (p50; band to p90)")
        ax.set_title(name)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    write_figure(fig, path)
    plt.close(fig)
    return True


def two_stage_plot(results: dict, path: str) -> bool:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    series = [(label, r) for label, r in results.items() if r.get("status") == "ok" and r.get("two_stage")]
    if not series:
        return False
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for n, (label, r) in enumerate(series):
        rows = r["two_stage"]
        xs = [ts["total_s"] for ts in rows] + [r["full"]["score_s"]]
        ys = [ts["recall"]["rsum"] for ts in rows] + [r["full"]["recall"]["rsum"]]
        ax.plot(xs, ys, marker="o", label=label)
        if n:  # label the points once: every series has the same k' values
            continue
        for ts in rows:
            ax.annotate(f"k'={ts['shortlist']}", (ts["total_s"], ts["recall"]["rsum"]), fontsize=7,
                        textcoords="offset points", xytext=(3, 3))
        ax.annotate("exhaustive", (xs[-1], ys[-1]), fontsize=7, textcoords="offset points", xytext=(3, -9))
    ax.set_xscale("log")
    ax.set_xlabel("search time, both directions, s (log)")
    ax.set_ylabel("rSum")
    ax.set_title("two-stage: recall against speed")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    write_figure(fig, path)
    plt.close(fig)
    return True


def write_plots(results: dict, out_dir: str) -> dict:
    """{title: file name} of the plots written."""
    written = {}
    if latency_plot(results, os.path.join(out_dir, "latency.png")):
        written["Latency against batch size"] = "latency.png"
    if two_stage_plot(results, os.path.join(out_dir, "two_stage.png")):
        written["Two-stage: recall against speed"] = "two_stage.png"
    return written
