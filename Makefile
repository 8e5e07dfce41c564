# Development commands.  The benchmarks are run by hand, never by CI; they
# need wrk and nginx (apt-get install -y wrk nginx) and start everything they
# measure on 127.0.0.1 themselves.  See docs/PERFORMANCE.md.

PYTHON ?= python
BENCH_ARGS ?=

.PHONY: test bench bench-quick profile

# The README's test command (after pip install '.[test]' and npm ci).
test:
	$(PYTHON) -m twisted.trial tests

# Every row, about eight minutes; BENCH_ARGS="--rows 1,2 --markdown out.md" to narrow it.
bench:
	$(PYTHON) bench/run.py $(BENCH_ARGS)

# A short smoke run of every row (noisy figures), about a minute and a half.
bench-quick:
	$(PYTHON) bench/run.py --quick $(BENCH_ARGS)

# Where a forward-auth check and a proxied GET spend their time (py-spy if
# installed, else cProfile).
profile:
	$(PYTHON) bench/profiling.py
