"""The gateway's benchmark (issue 6): ``python -m tests.bench.run --help``.

Not collected by pytest (pyproject ignores tests/bench); see tests/bench/README.md.
"""
