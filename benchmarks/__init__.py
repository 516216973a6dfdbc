"""metaserve's benchmark scripts, one module per study, sharing `benchmarks.common`.

Run from the project root, e.g. `.venv/bin/python -m benchmarks.sinusoid --budget-s 240`; results go to
`benchmarks/results/<tag>.{csv,json}` and are quoted, with their commands, in BENCHMARKS.md.
"""
