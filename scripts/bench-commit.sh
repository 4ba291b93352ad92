#!/usr/bin/env bash
# Commit benchmark (not a test): how long `ovlrun commit ID` and `ovlrun commit ID --atomic`
# take on a 60,000-file rootfs, side by side with what copying the same changes by hand costs
# (`cp -a` + `sync`, `rsync -a` + `sync`), and how long `ovlrun diff` and `ovlrun export` of a
# 10,000-change session take beside `tar -c` of its upper.
#
#   bash scripts/bench-commit.sh            # builds target/release/ovlrun if needed
#   OVLRUN=path/to/ovlrun RUNS=5 bash scripts/bench-commit.sh
#   ONLY=add,big bash scripts/bench-commit.sh   # some rows only
#   COLD=0 bash scripts/bench-commit.sh         # warm caches (default: dropped before each run)
#   SCRATCH=root bash scripts/bench-commit.sh   # on the root filesystem, not a loop image
#
# Sessions (rows): `one` changes 1 file, `many` changes 10,000 existing files (20 dirs x 500),
# `add` adds 10,000 new small files in 100 directories, `del` deletes a 10,000-file directory,
# `big` writes one 1 GiB file. The baselines apply the same changes from the upper by hand:
# `cp -a UPPER/. ROOTFS/` (`--reflink=auto`, cp's default), `rsync -a UPPER/ ROOTFS/`, and for
# `del` `rm -rf` / `rsync -a --delete`; each is followed by `sync`, as a commit is durable
# when it returns.
#
# Needs root and /dev/fuse (the sessions are real ovlrun sessions). Everything lives on a
# journaled ext4 in a loop image ($BENCH_DIR.img, kept between runs, mounted in a private
# mount namespace at $BENCH_DIR): this VM's root ext4 has no journal and is mounted with
# `discard`, so every unlink waits for a discard and creates after mass deletes slow down
# (see bench.sh); neither says much about a commit elsewhere. The rootfs and the preserved
# sessions are built once and cached under $BENCH_DIR/pristine; every timed run starts from a fresh `cp -a` of the
# rootfs and of the session it uses, restored at the same paths (the session record names the
# rootfs and the upper), then `sync` and (COLD=1) a drop of the page cache. The tables show the
# median of $RUNS runs (default 3), in seconds; the copy is not counted.
set -euo pipefail

SCRATCH_KIND="${SCRATCH:-image}"
if [[ $SCRATCH_KIND == image && -z "${OVLRUN_BENCH_NS:-}" ]]; then
    [[ $(id -u) -eq 0 ]] || { echo "bench-commit: run as root" >&2; exit 1; }
    exec env OVLRUN_BENCH_NS=1 unshare --mount --propagation private bash "$0" "$@"
fi

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BENCH_DIR="${BENCH_DIR:-/var/tmp/ovlrun-bench-commit}"
RUNS="${RUNS:-3}"
COLD="${COLD:-1}"
ONLY="${ONLY:-one,many,add,del,big}"
FILES=50000
PER_DIR=500 # 100 directories of 500 files

die() { echo "bench-commit: $*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "run as root (sessions mount FUSE)"
[[ -r /dev/fuse ]] || die "/dev/fuse is missing"
[[ -x "$REPO/examples/rootfs/bin/busybox" ]] || die "examples/rootfs has no busybox (run scripts/mkrootfs.sh)"
command -v rsync >/dev/null || die "rsync is missing (run scripts/setup.sh)"

if [[ -z "${OVLRUN:-}" ]]; then
    OVLRUN="$REPO/target/release/ovlrun"
    echo "building $OVLRUN ..."
    (cd "$REPO" && cargo build --release --quiet --bin ovlrun)
fi
[[ -x "$OVLRUN" ]] || die "no ovlrun binary at $OVLRUN"

mkdir -p "$BENCH_DIR"
LOOP=""
if [[ $SCRATCH_KIND == image ]]; then
    IMG="$BENCH_DIR.img"
    if [[ ! -e $IMG ]]; then
        truncate -s 12G "$IMG"
        mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$IMG"
    fi
    LOOP=$(losetup --find --show --direct-io=on "$IMG")
    mount "$LOOP" "$BENCH_DIR"
    trap 'umount "$BENCH_DIR" 2>/dev/null || umount -l "$BENCH_DIR"; losetup -d "$LOOP"' EXIT
fi
LIVE="$BENCH_DIR/live"         # the paths the session records name; commits run here
PRISTINE="$BENCH_DIR/pristine" # cached copy of LIVE before any commit
STAMP="$PRISTINE/.complete-v2"
SCRATCH="$BENCH_DIR/scratch"   # export output, the empty dir rsync deletes with

session() { # session NAME SCRIPT: a preserved session of LIVE's rootfs; its id in LIVE/id-NAME
    local state="$LIVE/state" before
    before=$(ls "$state/sessions" 2>/dev/null || true)
    OVLRUN_STATE="$state" "$OVLRUN" --rootfs "$LIVE/rootfs" --policy preserve -- sh -c "$2" \
        2>/dev/null
    ls "$state/sessions" | grep -vxF -e "$before" -e '' >"$LIVE/id-$1" || true
    [[ $(wc -l <"$LIVE/id-$1") -eq 1 ]] || die "session $1 was not kept"
}

expect_changes() { # expect_changes NAME LETTER COUNT
    local n
    n=$(OVLRUN_STATE="$LIVE/state" "$OVLRUN" diff "$(cat "$LIVE/id-$1")" | grep -c "^$2 " || true)
    [[ $n -eq $3 ]] || die "session '$1' shows $n '$2' changes, not $3"
}

# The rootfs: examples/rootfs plus 50,000 small files in data/d000..d099/f000..f499 and a
# 10,000-file directory data/del; then the preserved sessions; then a pristine copy of both.
build_cache() {
    echo "building the cached rootfs and sessions in $BENCH_DIR (once) ..."
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
    mkdir -p "$LIVE/rootfs/data/del"
    (cd "$LIVE/rootfs/data/del" && for ((f = 0; f < 10000; f++)); do echo "del $f" >"f$f"; done)
    local dirs=""
    for ((d = 0; d < 10000 / PER_DIR; d++)); do dirs+=" $(printf 'd%03d' "$d")"; done
    session one 'echo changed >> /data/d000/f000'
    session many "for d in $dirs; do for f in /data/\$d/f*; do echo changed >> \$f; done; done"
    session add 'i=0; while [ $i -lt 100 ]; do d=/new/n$i; mkdir -p $d; j=0;
        while [ $j -lt 100 ]; do echo "new $i/$j" > $d/f$j; j=$((j+1)); done; i=$((i+1)); done'
    session del 'rm -rf /data/del'
    session big 'dd if=/dev/urandom of=/big.bin bs=1M count=1024 2>/dev/null'
    expect_changes one C 1
    expect_changes many C 10000
    expect_changes add A 10101
    expect_changes del D 1
    expect_changes big A 1
    cp -a "$LIVE" "$PRISTINE"
    touch "$STAMP"
}

[[ -e "$STAMP" ]] || build_cache
COUNT=$(find "$PRISTINE/rootfs" -type f | wc -l)

# Puts the rootfs and session NAME back as in PRISTINE; then sync and, COLD=1, empty caches.
restore() {
    local id
    id=$(cat "$PRISTINE/id-$1")
    rm -rf "$LIVE/.rootfs.ovlrun-txn" "$LIVE/rootfs" "$LIVE/state/sessions/$id" "$SCRATCH"
    cp -a "$PRISTINE/rootfs" "$LIVE/rootfs"
    cp -a "$PRISTINE/state/sessions/$id" "$LIVE/state/sessions/$id"
    mkdir -p "$SCRATCH/empty"
    sync
    if [[ $COLD == 1 ]]; then echo 3 >/proc/sys/vm/drop_caches; fi
}

# Seconds (3 decimals) that `bash -c CMD` takes after `restore NAME`.
timed() {
    local name=$1 cmd=$2 start end
    restore "$name"
    start=$(date +%s.%N)
    bash -c "$cmd" >/dev/null 2>"$BENCH_DIR/stderr" || {
        cat "$BENCH_DIR/stderr" >&2
        die "failed: $cmd"
    }
    end=$(date +%s.%N)
    echo "$start $end" | awk '{ printf "%.3f\n", $2 - $1 }'
}

median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

runs() { # runs NAME CMD: the median of RUNS timings
    local i
    for ((i = 0; i < RUNS; i++)); do timed "$1" "$2"; done | median
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "-" }'; }

export OVLRUN_STATE="$LIVE/state"
R="$LIVE/rootfs"
echo
echo "ovlrun commit on a rootfs of $COUNT files ($OVLRUN), median of $RUNS fresh runs," \
    "caches $([[ $COLD == 1 ]] && echo dropped || echo warm), sync counted; seconds and ratio to cp -a + sync:"
printf '%-24s %9s %9s %16s %16s %16s\n' "session" "cp -a" "rsync -a" "commit" "commit --atomic" "rsync/cp"
for which in ${ONLY//,/ }; do
    id=$(cat "$PRISTINE/id-$which")
    U="$LIVE/state/sessions/$id/upper"
    case $which in
        one) label="1 file changed" ;;
        many) label="10,000 files changed" ;;
        add) label="10,000 files added" ;;
        del) label="10,000-file dir deleted" ;;
        big) label="1 GiB file added" ;;
        *) die "unknown row $which" ;;
    esac
    if [[ $which == del ]]; then
        cp_cmd="rm -rf '$R/data/del' && sync"
        rsync_cmd="rsync -a --delete '$SCRATCH/empty/' '$R/data/del/' && rmdir '$R/data/del' && sync"
    else
        cp_cmd="cp -a --reflink=auto '$U/.' '$R/' && sync"
        rsync_cmd="rsync -a '$U/' '$R/' && sync"
    fi
    cp_t=$(runs "$which" "$cp_cmd")
    rsync_t=$(runs "$which" "$rsync_cmd")
    plain=$(runs "$which" "'$OVLRUN' commit --force $id")
    atomic=$(runs "$which" "'$OVLRUN' commit --force --atomic $id")
    printf '%-24s %9s %9s %9s %6s %9s %6s %16s\n' "$label" "$cp_t" "$rsync_t" \
        "$plain" "$(ratio "$plain" "$cp_t")" "$atomic" "$(ratio "$atomic" "$cp_t")" \
        "$(ratio "$rsync_t" "$cp_t")"
done

if [[ ",$ONLY," == *,add,* ]]; then
    id=$(cat "$PRISTINE/id-add")
    U="$LIVE/state/sessions/$id/upper"
    echo
    echo "diff and export of the 10,000-file session (add); seconds and ratio to tar -c of its upper:"
    tar_t=$(runs add "tar -c -C '$U' -f '$SCRATCH/upper.tar' .")
    diff_t=$(runs add "'$OVLRUN' diff $id")
    export_t=$(runs add "'$OVLRUN' export $id -o '$SCRATCH/layer.tar'")
    printf '%-10s %9s\n' "tar -c" "$tar_t"
    printf '%-10s %9s %6s\n' "diff" "$diff_t" "$(ratio "$diff_t" "$tar_t")"
    printf '%-10s %9s %6s\n' "export" "$export_t" "$(ratio "$export_t" "$tar_t")"
fi
restore one
rm -rf "$SCRATCH"
