#!/usr/bin/env bash
# Side-by-side benchmark (not a test): the same workloads on ovlrun's FUSE filesystem,
# ovlrun's kernel backend, the kernel overlayfs mounted directly, fuse-overlayfs and the
# plain directory, alternating backends over several rounds; prints medians and the ratios
# to the kernel overlayfs and to fuse-overlayfs.
#
#   bash scripts/bench.sh [--rounds N] [--only WORKLOAD[,...]] [--backends B[,...]] [--json FILE]
#                         [--scratch image|root] [--baseline BIN]
#
# Backends: ovlrun-fuse ovlrun-kernel kernel fuse-overlayfs plain (the default set), and
# ovlrun-fuse-all (`ovlrun mount --passthrough all`), ovlrun-fuse-volatile (`ovlrun mount
# --volatile`: no fsync per copy-up, as the kernel's `volatile` and what a session that is
# discarded or synced once at its end does). `--baseline BIN` adds base-fuse and
# base-kernel, the same two setups served by another build of ovlrun (say, an older commit's
# target/release/ovlrun), interleaved with the others so a change is measured before and
# after in one run; the report prints this build's time over the baseline's.
#
# Run as root on a quiet machine. Lowers are built once under /var/tmp/ovlrun-bench.
# Uppers, work dirs and session state go on a scratch filesystem: by default a fresh
# journaled ext4 made for this run in an image on a loop device (`--scratch image`). This
# VM's root ext4 has no journal, and without one ext4's inode allocator skips every inode
# freed in the last minutes (recently_deleted), so creates after a mass delete slow down
# with the number deleted and untar_rm swung 0.6-5.2 s between rounds of one backend.
# `--scratch root` keeps them on the root filesystem, as before.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BENCH=/var/tmp/ovlrun-bench
ROUNDS=3
ONLY=""
BACKENDS_ARG=""
JSON=""
SCRATCH_KIND=image
BASELINE=""
while (($#)); do
    case "$1" in
        --rounds) ROUNDS="$2"; shift 2 ;;
        --only) ONLY="$2"; shift 2 ;;
        --json) JSON="$2"; shift 2 ;;
        --backends) BACKENDS_ARG="$2"; shift 2 ;;
        --scratch) SCRATCH_KIND="$2"; shift 2 ;;
        --baseline) BASELINE="$(realpath "$2")"; shift 2 ;;
        *) echo "bench.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

# Everything runs in a private mount namespace: no mount outlives the script.
if [[ -z "${OVLRUN_BENCH_NS:-}" ]]; then
    [[ "$(id -u)" == 0 ]] || { echo "bench.sh: run as root" >&2; exit 1; }
    exec env OVLRUN_BENCH_NS=1 unshare --mount --propagation private bash "$0" \
        --rounds "$ROUNDS" ${ONLY:+--only "$ONLY"} ${JSON:+--json "$JSON"} \
        ${BACKENDS_ARG:+--backends "$BACKENDS_ARG"} --scratch "$SCRATCH_KIND" \
        ${BASELINE:+--baseline "$BASELINE"}
fi
[[ -z "$BASELINE" || -x "$BASELINE" ]] || { echo "bench.sh: --baseline $BASELINE is not an executable" >&2; exit 2; }
[[ "$SCRATCH_KIND" =~ ^(image|root)$ ]] || { echo "bench.sh: --scratch takes image or root, not '$SCRATCH_KIND'" >&2; exit 2; }

OVLRUN="$REPO/target/release/ovlrun"
BACKENDS=(ovlrun-fuse ovlrun-kernel kernel fuse-overlayfs plain)
[[ -n "$BACKENDS_ARG" ]] && IFS=, read -r -a BACKENDS <<<"$BACKENDS_ARG"
[[ -n "$BASELINE" ]] && BACKENDS+=(base-fuse base-kernel)
RESULTS="$BENCH/results.tsv"   # workload backend round seconds cpu_s rss_kib
SCRATCH="$BENCH"               # where uppers and session state go (see --scratch)
LOOP=""

log() { printf 'bench: %s\n' "$*" >&2; }

setup() {
    bash "$REPO/scripts/setup.sh" >/dev/null
    (cd "$REPO" && cargo build --release -q)
    mkdir -p "$BENCH"
    if [[ ! -e "$BENCH/share.ok" ]]; then
        log "copying /usr/share into $BENCH/share (once)"
        rm -rf "$BENCH/share" && cp -a /usr/share "$BENCH/share" && touch "$BENCH/share.ok"
    fi
    if [[ ! -e "$BENCH/big.ok" ]]; then
        log "making the copy-up lower (1 GiB file, 1000 small files, a C project) (once)"
        rm -rf "$BENCH/big" && mkdir -p "$BENCH/big/small" "$BENCH/big/cproj"
        head -c 1G /dev/urandom >"$BENCH/big/big.bin"
        for i in $(seq 1000); do echo "$i" >"$BENCH/big/small/f$i"; done
        for i in $(seq 200); do
            printf 'int f%d(int x) { int s = 0; for (int i = 0; i < x; i++) s += i * %d; return s; }\n' "$i" "$i" >"$BENCH/big/cproj/f$i.c"
        done
        printf 'int main(void) { return 0; }\n' >"$BENCH/big/cproj/main.c"
        printf 'SRC := $(wildcard *.c)\nprog: $(SRC:.c=.o)\n\t$(CC) -o $@ $^\n%%.o: %%.c\n\t$(CC) -O2 -c -o $@ $<\n' >"$BENCH/big/cproj/Makefile"
        touch "$BENCH/big.ok"
    fi
    if [[ ! -e "$BENCH/small.tar" ]]; then
        log "making a tarball of 20,000 small files (once)"
        rm -rf "$BENCH/tarsrc" && mkdir -p "$BENCH/tarsrc"
        for d in $(seq 100); do
            mkdir "$BENCH/tarsrc/d$d"
            for f in $(seq 200); do echo "$d $f" >"$BENCH/tarsrc/d$d/f$f"; done
        done
        tar cf "$BENCH/small.tar" -C "$BENCH/tarsrc" . && rm -rf "$BENCH/tarsrc"
    fi
    if [[ "$SCRATCH_KIND" == image ]]; then
        # A new filesystem each run: no backend inherits another run's deletions.
        SCRATCH="$BENCH/scratch"
        rm -f "$BENCH/scratch.img" && truncate -s 16G "$BENCH/scratch.img"
        LOOP=$(losetup --find --show --direct-io=on "$BENCH/scratch.img")
        # Initialized in full now: lazy init would zero inode tables in the background
        # during the first workloads.
        mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$LOOP"
        mkdir -p "$SCRATCH" && mount "$LOOP" "$SCRATCH"
        log "scratch: fresh journaled ext4 on $LOOP (image $BENCH/scratch.img)"
    fi
}

drop_scratch() {
    umount_backend
    if [[ -n "$LOOP" ]]; then
        umount "$SCRATCH" 2>/dev/null || umount -l "$SCRATCH" || true
        losetup -d "$LOOP" || true
        rm -f "$BENCH/scratch.img"
        LOOP=""
    fi
}

wait_mounted() {
    local mnt="$1" i
    for i in $(seq 200); do
        grep -q " $mnt " /proc/self/mountinfo && return 0
        sleep 0.05
    done
    echo "bench: $mnt did not get mounted" >&2
    return 1
}

SERVER_PID=""
# mount_backend BACKEND LOWER -> sets MNT (where to work) and SERVER_PID (a FUSE server)
mount_backend() {
    local backend="$1" lower="$2" run="$SCRATCH/run"
    umount_backend
    rm -rf "$run" && mkdir -p "$run/upper" "$run/work" "$run/mnt"
    MNT="$run/mnt"
    SERVER_PID=""
    case "$backend" in
        ovlrun-fuse)
            "$OVLRUN" mount --lower "$lower" --upper "$run/upper" --work "$run/work" "$MNT" &
            SERVER_PID=$!
            wait_mounted "$MNT" ;;
        ovlrun-fuse-all)
            "$OVLRUN" mount --passthrough all --lower "$lower" --upper "$run/upper" --work "$run/work" "$MNT" &
            SERVER_PID=$!
            wait_mounted "$MNT" ;;
        ovlrun-fuse-volatile)
            "$OVLRUN" mount --volatile --lower "$lower" --upper "$run/upper" --work "$run/work" "$MNT" &
            SERVER_PID=$!
            wait_mounted "$MNT" ;;
        ovlrun-kernel)
            "$OVLRUN" mount --fs kernel --lower "$lower" --upper "$run/upper" --work "$run/work" "$MNT" &
            wait_mounted "$MNT" ;;
        base-fuse)
            "$BASELINE" mount --lower "$lower" --upper "$run/upper" --work "$run/work" "$MNT" &
            SERVER_PID=$!
            wait_mounted "$MNT" ;;
        base-kernel)
            "$BASELINE" mount --fs kernel --lower "$lower" --upper "$run/upper" --work "$run/work" "$MNT" &
            wait_mounted "$MNT" ;;
        kernel)
            mount -t overlay overlay -o "lowerdir=$lower,upperdir=$run/upper,workdir=$run/work,userxattr" "$MNT" ;;
        fuse-overlayfs)
            fuse-overlayfs -f -o "lowerdir=$lower,upperdir=$run/upper,workdir=$run/work" "$MNT" &
            SERVER_PID=$!
            wait_mounted "$MNT" ;;
        plain)
            # The plain directory: a private copy for workloads that write, the lower itself
            # for those that only read.
            if [[ "${WRITES:-0}" == 0 ]]; then
                MNT="$lower"
            elif [[ -d "$lower/cproj" ]]; then
                cp -a "$lower/cproj" "$MNT/"
            fi ;;
    esac
}

SERVER_CPU=0
SERVER_RSS=0
umount_backend() {
    SERVER_CPU=0 SERVER_RSS=0
    if [[ -n "$SERVER_PID" && -d /proc/$SERVER_PID ]]; then
        local ticks
        ticks=$(awk '{print $14 + $15}' "/proc/$SERVER_PID/stat")
        SERVER_CPU=$(awk -v t="$ticks" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f", t / hz }')
        SERVER_RSS=$(awk '/VmHWM/ {print $2}' "/proc/$SERVER_PID/status")
    fi
    if [[ -n "${MNT:-}" ]] && grep -q " $MNT " /proc/self/mountinfo; then
        umount "$MNT" 2>/dev/null || umount -l "$MNT"
    fi
    pkill -f "ovlrun mount --fs kernel --lower" 2>/dev/null || true
    pkill -f "^$BASELINE mount --fs kernel --lower" 2>/dev/null || true
    [[ -n "$SERVER_PID" ]] && wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
}

cold() { sync; echo 3 >/proc/sys/vm/drop_caches; }

now() { date +%s.%N; }

# workload NAME: runs in $MNT, prints nothing; its wall time is measured by the caller.
w_find_cold() { cold; find "$MNT" >/dev/null; }
w_stat_all() { cold; find "$MNT" -printf '%s %m %u\n' >/dev/null; }
w_read_all() { cold; find "$MNT" -type f -print0 | xargs -0 -n 500 cat >/dev/null; }
w_seq_write() { fio --name=w --filename="$MNT/fio.dat" --rw=write --bs=1M --size=1G --end_fsync=1 >/dev/null; }
w_seq_read() {
    fio --name=w --filename="$MNT/fio.dat" --rw=write --bs=1M --size=1G --end_fsync=1 >/dev/null
    cold
    local t0; t0=$(now)
    fio --name=r --filename="$MNT/fio.dat" --rw=read --bs=1M --size=1G >/dev/null
    TIMED=$(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }')
}
w_rand_write() { fio --name=rw --filename="$MNT/rand.dat" --rw=randwrite --bs=4k --size=256M --end_fsync=1 >/dev/null; }
w_untar_rm() { mkdir "$MNT/x" && tar xf "$BENCH/small.tar" -C "$MNT/x" && rm -rf "$MNT/x"; }
w_copyup_1g() { echo >>"$MNT/big.bin" && sync; }
w_chmod_1000() { chmod 600 "$MNT"/small/f*; }
w_chmod_1g() { chmod 600 "$MNT/big.bin"; }
w_cbuild() { make -s -C "$MNT/cproj" -j2 prog >/dev/null && rm -f "$MNT"/cproj/*.o "$MNT/cproj/prog"; }

# name lower writes
WORKLOADS=(
    "find_cold share 0"
    "stat_all share 0"
    "read_all share 0"
    "seq_write share 1"
    "seq_read share 1"
    "rand_write share 1"
    "untar_rm share 1"
    "copyup_1g big 1"
    "chmod_1000 big 1"
    "chmod_1g big 1"
    "cbuild big 1"
)

run_all() {
    : >"$RESULTS"
    local round spec name lower writes backend t0
    for round in $(seq "$ROUNDS"); do
        for spec in "${WORKLOADS[@]}"; do
            read -r name lower writes <<<"$spec"
            [[ -n "$ONLY" && ",$ONLY," != *",$name,"* ]] && continue
            # Rotate the order each round, so no backend always pays for a cold cache.
            local k order=()
            for k in "${!BACKENDS[@]}"; do
                order+=("${BACKENDS[$(((k + round) % ${#BACKENDS[@]}))]}")
            done
            for backend in "${order[@]}"; do
                if [[ "$backend" == plain && "$name" =~ ^(copyup_1g|chmod_1000|chmod_1g)$ ]]; then
                    continue   # no copy-up without layers
                fi
                WRITES=$writes mount_backend "$backend" "$BENCH/$lower"
                TIMED=""
                t0=$(now)
                "w_$name"
                local secs
                secs=${TIMED:-$(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }')}
                umount_backend
                printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$backend" "$round" "$secs" "$SERVER_CPU" "$SERVER_RSS" >>"$RESULTS"
                log "round $round $name $backend ${secs}s"
            done
        done
    done
    rm -rf "$SCRATCH/run"
}

launcher_start() {
    [[ -n "$ONLY" && ",$ONLY," != *",launcher,"* ]] && return 0
    local i t0 fs bin name
    for i in $(seq 30); do
        for fs in fuse kernel; do
            for bin in "$OVLRUN" ${BASELINE:+"$BASELINE"}; do
                name="ovlrun-$fs"
                [[ "$bin" == "$OVLRUN" ]] || name="base-$fs"
                t0=$(now)
                OVLRUN_STATE="$SCRATCH/state" "$bin" --fs "$fs" --rootfs "$REPO/examples/rootfs" -- true
                printf 'launcher_start\t%s\t%s\t%s\t0\t0\n' "$name" "$i" \
                    "$(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.4f", b - a }')" >>"$RESULTS"
            done
        done
    done
    # With a terminal: each under util-linux `script` (a pty), beside `script` running `true`,
    # so the difference is what the session's own pty and its relay cost.
    for i in $(seq 30); do
        t0=$(now)
        OVLRUN_STATE="$SCRATCH/state" script -qec \
            "$OVLRUN --fs kernel --rootfs $REPO/examples/rootfs --tty -- true" /dev/null >/dev/null
        printf 'launcher_start\tovlrun-kernel-tty\t%s\t%s\t0\t0\n' "$i" \
            "$(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.4f", b - a }')" >>"$RESULTS"
        t0=$(now)
        script -qec true /dev/null >/dev/null
        printf 'launcher_start\tscript-only\t%s\t%s\t0\t0\n' "$i" \
            "$(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.4f", b - a }')" >>"$RESULTS"
    done
    for i in $(seq 30); do
        t0=$(now)
        bwrap --unshare-all --ro-bind "$REPO/examples/rootfs" / --proc /proc --dev /dev \
            --tmpfs /tmp --new-session --die-with-parent true
        printf 'launcher_start\tbwrap\t%s\t%s\t0\t0\n' "$i" \
            "$(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.4f", b - a }')" >>"$RESULTS"
    done
    for i in $(seq 30); do
        t0=$(now)
        unshare -Urm --fork --pid true
        printf 'launcher_start\tunshare\t%s\t%s\t0\t0\n' "$i" \
            "$(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.4f", b - a }')" >>"$RESULTS"
    done
}

# Real-tree workloads (Debian, issue "Real distribution trees"): installing a package from
# an already downloaded .deb, and a C build, in ovlrun sessions on both backends, beside a
# chroot into a kernel overlayfs mount of the same tree.
debian_workloads() {
    [[ -n "$ONLY" && ",$ONLY," != *",deb_install,"* && ",$ONLY," != *",deb_cbuild,"* ]] && return 0
    bash "$REPO/scripts/mkdebian.sh" >/dev/null
    local built="$REPO/target/debian/bookworm-build" tree="$BENCH/debian"
    [[ -d "$built" ]] || { log "no $built: skipping the Debian workloads"; return 0; }
    if [[ ! -e "$BENCH/debian.ok" ]]; then
        log "preparing the Debian bench tree (once): the build tree + a C project + hello's .deb"
        rm -rf "$tree" && cp -a "$built" "$tree"
        mkdir -p "$tree/src" && cp "$BENCH"/big/cproj/* "$tree/src/"
        # A fresh debootstrap tree has no package lists yet.
        if ! chroot "$tree" sh -c 'apt-get update -q >/dev/null && cd /tmp && apt-get download -q hello >/dev/null && mv hello_*.deb /hello.deb'; then
            log "cannot download hello's .deb into the Debian bench tree: skipping the Debian workloads"
            return 0
        fi
        # The bench measures the install, not the lists: drop them again.
        rm -rf "$tree"/var/lib/apt/lists/*
        touch "$BENCH/debian.ok"
    fi
    local i backend t0 cmd
    for i in $(seq "$ROUNDS"); do
        for cmd in "deb_install:dpkg -i /hello.deb >/dev/null" "deb_cbuild:make -s -C /src -j2 prog >/dev/null"; do
            local name="${cmd%%:*}" script="${cmd#*:}"
            for backend in ovlrun-fuse ovlrun-kernel kernel; do
                t0=$(now)
                case "$backend" in
                    ovlrun-*)
                        OVLRUN_STATE="$SCRATCH/state" "$OVLRUN" --fs "${backend#ovlrun-}" --rootfs "$tree" -- sh -c "$script" ;;
                    kernel)
                        local run="$SCRATCH/run"
                        rm -rf "$run" && mkdir -p "$run/upper" "$run/work" "$run/mnt"
                        mount -t overlay overlay -o "lowerdir=$tree,upperdir=$run/upper,workdir=$run/work,userxattr" "$run/mnt"
                        mount -t proc proc "$run/mnt/proc"
                        chroot "$run/mnt" sh -c "$script"
                        umount "$run/mnt/proc" "$run/mnt" ;;
                esac
                printf '%s\t%s\t%s\t%s\t0\t0\n' "$name" "$backend" "$i" \
                    "$(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }')" >>"$RESULTS"
                log "round $i $name $backend"
            done
        done
    done
}

report() {
    python3 - "$RESULTS" "$JSON" <<'EOF'
import json, statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
data = {}
for w, b, _round, secs, cpu, rss in rows:
    d = data.setdefault(w, {}).setdefault(b, {"secs": [], "cpu": [], "rss": []})
    d["secs"].append(float(secs)); d["cpu"].append(float(cpu)); d["rss"].append(int(rss))
out = {}
order = ["ovlrun-fuse", "ovlrun-fuse-all", "ovlrun-fuse-volatile", "ovlrun-kernel", "kernel", "fuse-overlayfs", "plain", "unshare", "bwrap"]
print(f"{'workload':<15}" + "".join(f"{b:>15}" for b in order) + f"{'fuse/kernel':>13}{'fuse-ovl/fuse':>15}")
for w, bs in data.items():
    med = {b: statistics.median(v["secs"]) for b, v in bs.items()}
    line = f"{w:<15}" + "".join(f"{med[b]:>14.3f}s" if b in med else f"{'-':>15}" for b in order)
    ref = med.get("kernel") or med.get("unshare")
    f = med.get("ovlrun-fuse")
    fo = med.get("fuse-overlayfs")
    line += f"{f / ref:>12.2f}x" if f and ref else f"{'-':>13}"
    line += f"{fo / f:>14.2f}x" if f and fo else f"{'-':>15}"
    print(line)
    out[w] = {b: {"median_s": med[b],
                  "server_cpu_s": statistics.median(bs[b]["cpu"]),
                  "server_peak_rss_kib": max(bs[b]["rss"])} for b in bs}
    for b in bs:
        if ref: out[w][b]["ratio_to_kernel"] = med[b] / ref
        if fo: out[w][b]["ratio_to_fuse_overlayfs"] = med[b] / fo
# Setups the table has no column for (the launcher on a terminal, and its baseline).
for w, bs in data.items():
    for b in sorted(set(bs) - set(order)):
        print(f"  {w}: {b} median {statistics.median(bs[b]['secs']) * 1000:.1f} ms")
if "launcher_start" in data:
    ls = {b: statistics.median(v["secs"]) for b, v in data["launcher_start"].items()}
    if "ovlrun-kernel-tty" in ls and "script-only" in ls:
        print(f"  launcher_start: ovlrun-kernel --tty minus script alone "
              f"{(ls['ovlrun-kernel-tty'] - ls['script-only']) * 1000:.1f} ms")
baseline = [(w, a, b) for w, bs in data.items() for a, b in
            (("ovlrun-fuse", "base-fuse"), ("ovlrun-kernel", "base-kernel")) if a in bs and b in bs]
if baseline:
    print("this build over the --baseline build (median time; above 1: this build is slower):")
    for w, a, b in baseline:
        ma, mb = (statistics.median(data[w][x]["secs"]) for x in (a, b))
        print(f"  {w:<15} {a:<14} {ma:>9.4f}s  {b:<12} {mb:>9.4f}s  {ma / mb:>6.2f}x")
print("fuse/kernel: ovlrun's FUSE time over the kernel overlayfs's (lower is better);")
print("fuse-ovl/fuse: fuse-overlayfs's time over ovlrun's FUSE time (above 1: ovlrun is faster).")
for w, bs in data.items():
    for b in ("ovlrun-fuse", "ovlrun-fuse-all", "ovlrun-fuse-volatile", "base-fuse", "fuse-overlayfs"):
        if b in bs and max(bs[b]["rss"]) > 0:
            print(f"  {w}: {b} server cpu {statistics.median(bs[b]['cpu']):.2f}s, peak rss {max(bs[b]['rss']) // 1024} MiB")
if sys.argv[2]:
    json.dump(out, open(sys.argv[2], "w"), indent=2)
EOF
}

trap drop_scratch EXIT
setup
run_all
launcher_start
debian_workloads
report
