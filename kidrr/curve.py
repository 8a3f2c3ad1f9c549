"""The training curve as a PNG: dev rSum and the hardest-negative loss per epoch.

kidrr-train rewrites OUT/curve.png after every epoch; `python -m kidrr.curve HISTORY.json OUT.png`
redraws one from any run's history.json.
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


def main(argv=None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        raise SystemExit("usage: python -m kidrr.curve HISTORY.json OUT.png")
    with open(args[0]) as fh:
        history = json.load(fh)["history"]
    if not history:
        raise SystemExit(f"{args[0]} holds no epochs yet")
    curve_plot(history, args[1])


if __name__ == "__main__":
    main()
