"""Studies behind past decisions: rerunnable side-by-side measurements, not benchmarks a user runs.

One line per study, what it decided and where its numbers are: bench/studies/README.md.
"""
