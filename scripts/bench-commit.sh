#!/usr/bin/env bash
# Commit benchmark (not a test): how long `ovlrun commit ID` and `ovlrun commit ID --atomic`
# take on a 50,000-file rootfs, for a session that changed 1 file and one that changed 10,000.
#
#   bash scripts/bench-commit.sh            # builds target/release/ovlrun if needed
#   OVLRUN=path/to/ovlrun RUNS=5 bash scripts/bench-commit.sh
#
# Needs root and /dev/fuse (the sessions are real ovlrun sessions). The 50k-file rootfs and
# the two preserved sessions are built once and cached under $BENCH_DIR (default
# /var/tmp/ovlrun-bench-commit/pristine); every timed commit starts from a fresh `cp -a` of
# them, restored at the same paths (the session record names the rootfs and the upper). The table
# shows the median of $RUNS runs (default 3), in seconds; the copy time is not counted.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BENCH_DIR="${BENCH_DIR:-/var/tmp/ovlrun-bench-commit}"
RUNS="${RUNS:-3}"
FILES=50000
PER_DIR=500 # 100 directories of 500 files

die() { echo "bench-commit: $*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "run as root (sessions mount FUSE)"
[[ -r /dev/fuse ]] || die "/dev/fuse is missing"
[[ -x "$REPO/examples/rootfs/bin/busybox" ]] || die "examples/rootfs has no busybox (run scripts/mkrootfs.sh)"

if [[ -z "${OVLRUN:-}" ]]; then
    OVLRUN="$REPO/target/release/ovlrun"
    echo "building $OVLRUN ..."
    (cd "$REPO" && cargo build --release --quiet --bin ovlrun)
fi
[[ -x "$OVLRUN" ]] || die "no ovlrun binary at $OVLRUN"

mkdir -p "$BENCH_DIR"
LIVE="$BENCH_DIR/live"         # the paths the session records name; commits run here
PRISTINE="$BENCH_DIR/pristine" # cached copy of LIVE before any commit
STAMP="$PRISTINE/.complete-v1"

# The rootfs: examples/rootfs plus 50,000 small files in data/d000..d099/f000..f499; then the
# two preserved sessions; then a pristine copy of both.
build_cache() {
    echo "building the cached 50k-file rootfs and sessions in $BENCH_DIR (once) ..."
    rm -rf "$LIVE" "$PRISTINE"
    mkdir -p "$LIVE"
    cp -a "$REPO/examples/rootfs" "$LIVE/rootfs"
    local d f dir
    for ((d = 0; d < FILES / PER_DIR; d++)); do
        dir=$(printf '%s/rootfs/data/d%03d' "$LIVE" "$d")
        mkdir -p "$dir"
        (cd "$dir" && for ((f = 0; f < PER_DIR; f++)); do
            printf 'file %d/%d\n' "$d" "$f" >"$(printf 'f%03d' "$f")"
        done)
    done
    local state="$LIVE/state" dirs=""
    for ((d = 0; d < 10000 / PER_DIR; d++)); do dirs+=" $(printf 'd%03d' "$d")"; done
    # Session "one" changes one file; session "many" changes 10,000 (20 dirs x 500).
    OVLRUN_STATE="$state" "$OVLRUN" --rootfs "$LIVE/rootfs" --policy preserve -- \
        sh -c 'echo changed >> /data/d000/f000' 2>/dev/null
    ls "$state/sessions" >"$LIVE/id-one"
    OVLRUN_STATE="$state" "$OVLRUN" --rootfs "$LIVE/rootfs" --policy preserve -- \
        sh -c "for d in $dirs; do for f in /data/\$d/f*; do echo changed >> \$f; done; done" \
        2>/dev/null
    ls "$state/sessions" | grep -vxF "$(cat "$LIVE/id-one")" >"$LIVE/id-many"
    local n
    n=$(OVLRUN_STATE="$state" "$OVLRUN" diff "$(cat "$LIVE/id-many")" | grep -c '^C ' || true)
    [[ $n -eq 10000 ]] || die "session 'many' changed $n files, not 10000"
    n=$(OVLRUN_STATE="$state" "$OVLRUN" diff "$(cat "$LIVE/id-one")" | grep -c '^C ' || true)
    [[ $n -eq 1 ]] || die "session 'one' changed $n files, not 1"
    cp -a "$LIVE" "$PRISTINE"
    touch "$STAMP"
}

[[ -e "$STAMP" ]] || build_cache
COUNT=$(find "$PRISTINE/rootfs" -type f | wc -l)

# Puts LIVE back as PRISTINE (a fresh rootfs and fresh sessions).
restore() {
    rm -rf "$BENCH_DIR/.rootfs.ovlrun-txn" "$LIVE/.rootfs.ovlrun-txn" "$LIVE"
    cp -a "$PRISTINE" "$LIVE"
    rm -f "$LIVE/.complete-v1"
}

# Seconds (3 decimals) one `ovlrun commit ID [--atomic]` takes on a fresh copy.
time_commit() {
    local id=$1 flag=$2 start end
    restore
    sync
    start=$(date +%s.%N)
    OVLRUN_STATE="$LIVE/state" "$OVLRUN" commit "$id" $flag 2>/dev/null ||
        die "ovlrun commit $id $flag failed"
    end=$(date +%s.%N)
    echo "$start $end" | awk '{ printf "%.3f\n", $2 - $1 }'
}

median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

echo
echo "ovlrun commit on a rootfs of $COUNT files ($OVLRUN), median of $RUNS fresh runs:"
printf '%-22s %12s %16s\n' "session" "commit (s)" "commit --atomic (s)"
for which in one many; do
    id=$(cat "$PRISTINE/id-$which")
    label=$([[ $which == one ]] && echo "1 file changed" || echo "10,000 files changed")
    plain=$(for ((i = 0; i < RUNS; i++)); do time_commit "$id" ""; done | median)
    atomic=$(for ((i = 0; i < RUNS; i++)); do time_commit "$id" --atomic; done | median)
    printf '%-22s %12s %16s\n' "$label" "$plain" "$atomic"
done
restore
