"""kidrr.bench: latency, Recall@K and parity per backend and precision, side by side (docs/bench.md).

`kidrr-bench` (cli.py) drives one worker process per backend (worker.py) and writes the reports.
bench/speed.py is the separate issue-4 speed study. Nothing here imports torch in the parent.
"""
