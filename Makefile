# xdpstack developer entry points. Every target sets up .venv first (scripts/setup.sh,
# quick when nothing changed).

VENV := .venv
PY   := $(VENV)/bin/python
RUFF := $(VENV)/bin/ruff

.PHONY: help setup test lint format demo simdemo bench compare clean

help:
	@echo "make demo   - xdpstackd --sandbox with a kernel echo server in its namespace: data both ways"
	@echo "make simdemo - the TCP/IP core alone: two stacks on a lossy simulated link"
	@echo "make test   - lint, format check and the test suite (what CI runs)"
	@echo "make bench  - benchmark of the sans-IO core, back-to-back in one process"
	@echo "make compare - xdpstack against the kernel's TCP on one veth pair: ratio table + plot"
	@echo "make lint   - ruff check and ruff format --check"
	@echo "make format - ruff format, then ruff check --fix"
	@echo "make setup  - Debian packages and .venv (run by every target above)"
	@echo "make clean  - remove .venv and caches"

setup:
	@scripts/setup.sh

lint: setup
	$(RUFF) check .
	$(RUFF) format --check .

# pytest exits 5 when it collected no tests: that is reported loudly and fails.
test: lint
	@rc=0; $(PY) -m pytest -n 2 || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests (exit 5)" >&2; fi; \
	exit $$rc

format: setup
	$(RUFF) format .
	$(RUFF) check --fix .

demo: setup
	$(PY) -m xdpstackd.demo

simdemo: setup
	$(PY) -m xdpstackd.simnet.demo

bench: setup
	$(PY) bench/core_bench.py

compare: setup
	$(PY) bench/compare.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis build dist
	find . -path ./.git -prune -o -type d \( -name __pycache__ -o -name '*.egg-info' \) \
		-prune -exec rm -rf {} +
