#!/usr/bin/env bash
# Run bench/compare.py on a clean checkout of one commit instead of the working tree.
#
#     bench/at_commit.sh [--rev REV] [compare.py options...]     # REV: default HEAD
#
# The daemon and the client library run from the checkout compare.py sits in, and several
# people may be editing this tree at once: a run on the working tree measures whatever
# half-done edits are there (and the JSON can only list them). This makes a detached git
# worktree of REV in a temporary directory, builds its cffi modules there (the *_build.py
# scripts, as setup.py does), runs that worktree's compare.py with its daemon/ and client/
# first on PYTHONPATH (ahead of the editable install of this checkout) and the venv of this
# checkout, and removes the worktree afterwards. The JSON's "git" records REV's commit with
# no modified files. Results go to this checkout's bench/results/ unless --output is given.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=$REPO/.venv/bin/python
REV=HEAD
if [[ ${1:-} == --rev ]]; then
    REV=$2
    shift 2
fi
commit=$(git -C "$REPO" rev-parse --verify "$REV^{commit}")
args=("$@")
if [[ " ${args[*]} " != *" --output"* ]]; then
    args+=(--output "$REPO/bench/results/compare-$(date +%Y%m%d-%H%M%S).json")
fi

wt=$(mktemp -d /tmp/xdpstack-bench-wt-XXXXXX)
cleanup() {
    if ! git -C "$REPO" worktree remove --force "$wt" 2>/dev/null; then
        rm -rf "$wt"
        git -C "$REPO" worktree prune
    fi
}
trap cleanup EXIT
git -C "$REPO" worktree add --quiet --detach "$wt" "$commit"
echo "at_commit.sh: $(git -C "$wt" log -1 --format='%h %s') in $wt"
(
    cd "$wt"
    git ls-files '*_build.py' | while read -r build; do
        "$PY" "$build" >/dev/null
    done
)
PYTHONPATH="$wt/daemon:$wt/client${PYTHONPATH:+:$PYTHONPATH}" "$PY" "$wt/bench/compare.py" "${args[@]}"
