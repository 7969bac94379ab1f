#!/usr/bin/env bash
# The long runs of the hardening checks (CI runs shorter ones): every request entry fuzzed
# with hypothesis's "long" profile (3000 examples per entry and model), and the model server
# loaded by 16 clients x 10,000 requests (two passes; RSS growth of the second < 5%).
# About 20-30 minutes on 2 cores. Run after examples/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
HYPOTHESIS_PROFILE=long python3 -m pytest -q -p no:cacheprovider -s tests/test_fuzz.py 2>&1 | grep -E "^fuzz:|passed|failed|Error"
EDGEBUNDLE_LOAD_PER_CLIENT=10000 python3 -m pytest -q -s -p no:cacheprovider tests/test_server.py -k test_load_16
