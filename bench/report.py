"""The bench's results as tables: terminal text and Markdown, from one list of rows per table."""
from __future__ import annotations

from .latency import INCLUDES

OPS = (("image_encode", "image encode", "img/s"), ("caption_encode", "caption encode", "cap/s"),
       ("score", "score 1 x b", "pairs/s"))


def _ok(results: dict):
    return [(label, r) for label, r in results.items() if r.get("status") == "ok"]


def latency_rows(results: dict) -> tuple[list, list]:
    head = ["target", "operation", "batch", "p50 ms", "p90 ms", "p99 ms", "throughput", "calls"]
    rows = []
    for label, r in _ok(results):
        for op, name, unit in OPS:
            for batch, s in sorted(r["latency"][op].items(), key=lambda kv: int(kv[0])):
                rows.append([label, name, str(batch), f"{s['p50_ms']:.2f}", f"{s['p90_ms']:.2f}",
                             f"{s['p99_ms']:.2f}", f"{s['throughput_per_s']:,.0f} {unit}", str(s["calls"])])
    return head, rows


def _recall_cells(rec: dict) -> list:
    return [f"{rec['i2t_r1']:.1f} / {rec['i2t_r5']:.1f} / {rec['i2t_r10']:.1f}",
            f"{rec['t2i_r1']:.1f} / {rec['t2i_r5']:.1f} / {rec['t2i_r10']:.1f}", f"{rec['rsum']:.2f}"]


def retrieval_rows(results: dict) -> tuple[list, list]:
    head = ["target", "ranked set", "full retrieval s", "score pairs/s", "i2t R@1/5/10", "t2i R@1/5/10", "rSum"]
    rows = []
    for label, r in _ok(results):
        full = r.get("full")
        if full:
            n, m = (full["folds"][0][1] - full["folds"][0][0]), full["pairs"] // len(full["folds"])
            where = f"{full['protocol']}: {len(full['folds'])} x {n}x{m // n}"
            rows.append([label, where, f"{full['wall_s']:.1f}", f"{full['score_pairs_per_s']:,.0f}"]
                        + _recall_cells(full["recall"]))
        else:  # the reference ranks the parity block only
            block = r["parity_block"]
            rows.append([label, f"parity block {block['images']}x{block['captions']}", "not run",
                         f"{block['images'] * block['captions'] / block['score_s']:,.0f}"]
                        + _recall_cells(block["recall"]))
    return head, rows


def parity_rows(results: dict) -> tuple[list, list]:
    head = ["target", "block", "max |d score|", "mean |d score|", "d i2t R@1/5/10", "d t2i R@1/5/10", "d rSum"]
    rows = []
    for label, r in _ok(results):
        p = r.get("parity")
        if p is None:
            continue
        d = p["delta_recall"]
        rows.append([label, p["block"], f"{p['max_abs_delta_score']:.2e}", f"{p['mean_abs_delta_score']:.2e}",
                     f"{d['i2t_r1']:+.1f} / {d['i2t_r5']:+.1f} / {d['i2t_r10']:+.1f}",
                     f"{d['t2i_r1']:+.1f} / {d['t2i_r5']:+.1f} / {d['t2i_r10']:+.1f}", f"{d['rsum']:+.2f}"])
    return head, rows


def two_stage_rows(results: dict) -> tuple[list, list]:
    head = ["target", "k'", "search s (both ways)", "speed-up vs exhaustive", "rSum", "d rSum vs exhaustive"]
    rows = []
    for label, r in _ok(results):
        for ts in r.get("two_stage") or []:
            rows.append([label, str(ts["shortlist"]), f"{ts['total_s']:.2f}", f"{ts['speedup_vs_exhaustive']:.1f}x",
                         f"{ts['recall']['rsum']:.2f}", f"{ts['delta_rsum']:+.2f}"])
    return head, rows


def not_run_rows(results: dict, skipped: list) -> tuple[list, list]:
    head = ["target", "status", "reason"]
    rows = [[label, "skipped", reason] for label, reason in skipped]
    rows += [[label, r["status"], r.get("reason", "")] for label, r in results.items() if r.get("status") != "ok"]
    return head, rows


TABLES = (("Latency (warm-up excluded)", latency_rows), ("Full retrieval and Recall@K", retrieval_rows),
          ("Parity with the torch reference", parity_rows), ("Two-stage sweep", two_stage_rows))


def text_table(head: list, rows: list) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(head, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()
    return "\n".join([line(head), "  ".join("-" * w for w in widths)] + [line(r) for r in rows])


def markdown_table(head: list, rows: list) -> str:
    esc = lambda c: str(c).replace("|", "\\|")
    out = ["| " + " | ".join(map(esc, head)) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(map(esc, r)) + " |" for r in rows]
    return "\n".join(out)


def terminal(run: dict) -> str:
    parts = [_summary_line(run)]
    for title, make in TABLES:
        head, rows = make(run["results"])
        if rows:
            parts.append(f"\n{title}\n" + text_table(head, rows))
    head, rows = not_run_rows(run["results"], run["skipped"])
    if rows:
        parts.append("\nNot run\n" + text_table(head, rows))
    return "\n".join(parts)


def _summary_line(run: dict) -> str:
    s = run["setup"]
    return (f"kidrr bench: {s['data']} ({s['images']} images x {s['captions']} captions), protocol {s['protocol']}, "
            f"{s['threads']} threads, checkpoint {s['checkpoint'] or '(none)'}")


def markdown(run: dict, plots: dict) -> str:
    s = run["setup"]
    lines = ["# kidrr bench report", "", _summary_line(run), "",
             f"- command: `{s['command']}`", f"- wall time of the whole run: {run['wall_s']:.1f} s",
             f"- host: {s['host']}", f"- kidrr {s['kidrr']}, onnxruntime {s.get('onnxruntime') or 'absent'}",
             f"- parity block: the first {s['parity_images']} images and their captions, scored by every target "
             f"and compared with the torch reference",
             f"- full retrieval: per fold ({s['protocol']}): encode images + encode captions (tokenisation "
             f"included) + score every pair + sort both ways; recall averaged over folds",
             "", "What one latency call includes:", ""]
    lines += [f"- {name}: {INCLUDES[op]}" for op, name, _ in OPS]
    for title, make in TABLES:
        head, rows = make(run["results"])
        if rows:
            lines += ["", f"## {title}", "", markdown_table(head, rows)]
    head, rows = not_run_rows(run["results"], run["skipped"])
    if rows:
        lines += ["", "## Not run", "", markdown_table(head, rows)]
    for title, file in plots.items():
        lines += ["", f"## {title}", "", f"![{title}]({file})"]
    return "\n".join(lines) + "\n"
