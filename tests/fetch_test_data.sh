#!/usr/bin/env bash
# Fetch the small real data sets the tests use (ISLP wheel: NCI60, Khan) into a cache folder.
# Set-up step only: tests never touch the network. Never fails the build: when the package
# index cannot be reached, the tests that need the data are skipped and say why.
#   GENODL_TEST_DATA   cache folder (default: .test-data/ in the repository)
#   PYTHON             interpreter whose pip is used (default: .venv/bin/python, else python3)
set -u
cd "$(dirname "$0")/.."
dest="${GENODL_TEST_DATA:-.test-data}"
python="${PYTHON:-}"
if [ -z "$python" ]; then
    if [ -x .venv/bin/python ]; then python=.venv/bin/python; else python=python3; fi
fi
mkdir -p "$dest" || { echo "fetch_test_data: cannot create $dest; skipping"; exit 0; }
if ls "$dest"/[Ii][Ss][Ll][Pp]-*.whl >/dev/null 2>&1; then
    echo "fetch_test_data: ISLP wheel already in $dest"
    exit 0
fi
if timeout 300 "$python" -m pip download --quiet --no-deps ISLP -d "$dest"; then
    echo "fetch_test_data: ISLP wheel saved in $dest"
else
    echo "fetch_test_data: could not download the ISLP wheel (offline?); real-data tests will be skipped"
fi
exit 0
