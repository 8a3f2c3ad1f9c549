"""The training curve as a PNG: dev rSum and the hardest-negative loss per epoch.

kidrr train rewrites OUT/curve.png after every epoch; `python -m kidrr.curve HISTORY.json OUT.png`
redraws one from any run's history.json, and `python -m kidrr.curve --compare NAME=HISTORY.json ...
OUT.png` draws several runs' dev rSum on one chart.
"""
from __future__ import annotations

import json
import sys

from .fileio import write_figure


def curve_plot(history: list, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    epochs = [h["epoch"] for h in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.plot(epochs, [h.get("dev_rsum_unfused", h["dev_rsum"]) for h in history], marker="o", label="full scorer")
    if any(h.get("score_fusion") for h in history):
        left.plot(epochs, [h["dev_rsum"] for h in history], marker="^", label="fused with the globals (dev-chosen weight)")
    left.plot(epochs, [h["dev_rsum_globals"] for h in history], marker="s", label="globals' cosine alone")
    left.set_ylabel("dev rSum")
    right.plot(epochs, [h["loss_hardest_last"] for h in history], marker="o", label="scorer")
    right.plot(epochs, [h["loss_hardest_globals_last"] for h in history], marker="s", label="globals")
    right.axhline(history[-1]["plateau"], color="k", linestyle="--", label="plateau 2 x batch x margin")
    right.set_ylabel("hardest-negative loss, last 50 batches")
    hardest = [h["epoch"] for h in history if h["hardest"]]
    for ax in (left, right):
        if hardest:  # shade the epochs trained on hardest negatives
            ax.axvspan(min(hardest) - 0.5, max(hardest) + 0.5, color="orange", alpha=0.12,
                       label="trained on hardest negatives")
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    write_figure(fig, path)
    plt.close(fig)


def compare_plot(runs: dict, path: str) -> None:
    """Dev rSum per epoch of several runs ({name: history}): full scorer solid, globals dashed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, history in runs.items():
        epochs = [h["epoch"] for h in history]
        line, = ax.plot(epochs, [h.get("dev_rsum_unfused", h["dev_rsum"]) for h in history], marker="o",
                        label=f"{name}: full scorer")
        ax.plot(epochs, [h["dev_rsum_globals"] for h in history], marker="s", linestyle="--",
                color=line.get_color(), label=f"{name}: globals")
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("dev rSum")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    write_figure(fig, path)
    plt.close(fig)


def _history(path: str) -> list:
    with open(path) as fh:
        history = json.load(fh)["history"]
    if not history:
        raise SystemExit(f"{path} holds no epochs yet")
    return history


def main(argv=None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--compare"] and len(args) >= 3 and all("=" in a for a in args[1:-1]):
        compare_plot({a.split("=", 1)[0]: _history(a.split("=", 1)[1]) for a in args[1:-1]}, args[-1])
        return
    if len(args) != 2:
        raise SystemExit("usage: python -m kidrr.curve HISTORY.json OUT.png\n"
                         "       python -m kidrr.curve --compare NAME=HISTORY.json ... OUT.png")
    curve_plot(_history(args[0]), args[1])


if __name__ == "__main__":
    main()
