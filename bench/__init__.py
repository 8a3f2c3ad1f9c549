"""kidrr.bench: latency, Recall@K and parity per backend and precision, side by side (docs/bench.md).

`kidrr bench` (cli.py) drives one worker process per backend (worker.py) and writes the reports;
`kidrr bench scale` (scale.py), bench/load.py, bench/speed.py and bench/images_speed.py are the
other benchmarks a user runs. studies/ holds the side-by-side studies behind past defaults.
Nothing here imports torch in the parent.
"""
