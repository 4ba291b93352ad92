#!/usr/bin/env bash
# Times a container's whole life through two managers with runc and with ovlrun as the OCI
# runtime, side by side in one run (issue 15's target: ovlrun at most runc's time):
#   podman run --rm IMAGE true       (podman + conmon, as root)
#   ctr run --rm IMAGE ID true       (a containerd this script starts, its runc shim)
# Each is run RUNS times per runtime, the runtimes alternating, after one warm-up run each;
# the median is printed, and ovlrun's ratio to runc. A runtime whose run fails prints "-".
#
# As root, after scripts/setup.sh. Everything (storage, state, sockets, cgroups under
# /ovlrun-bench-PID) lives in a temp dir and a private mount namespace and goes at exit.
#
#   bash scripts/bench-runtime.sh            # ovlrun from target/release (built if missing)
#   RUNS=5 OVLRUN=target/debug/ovlrun bash scripts/bench-runtime.sh
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUNS="${RUNS:-20}"
IMAGE=localhost/ovlrun-rootfs:latest

die() {
    printf 'bench-runtime: error: %s\n' "$*" >&2
    exit 1
}

[[ "$(id -u)" == 0 ]] || die "run as root (podman and containerd as root)"
for p in podman conmon containerd ctr containerd-shim-runc-v2 runc; do
    command -v "$p" >/dev/null || die "$p is missing: run scripts/setup.sh"
done
[[ -x "$REPO/examples/rootfs/bin/busybox" ]] || die "examples/rootfs is incomplete: run scripts/mkrootfs.sh"

# Podman's and containerd's mounts stay in a mount namespace of this script's own.
if [[ -z "${OVLRUN_BENCH_NS:-}" ]]; then
    exec env OVLRUN_BENCH_NS=1 unshare --mount --propagation private bash "$0" "$@"
fi

OVLRUN="${OVLRUN:-$REPO/target/release/ovlrun}"
if [[ ! -x "$OVLRUN" ]]; then
    (cd "$REPO" && cargo build --release --quiet)
fi
OVLRUN="$(realpath "$OVLRUN")"
RUNC="$(command -v runc)"

# Short: podman refuses a run root over 50 bytes; unix sockets end at 108.
WORK="$(mktemp -d /tmp/ovlrun-bench.XXXXXX)"
CGROUP_PARENT="/ovlrun-bench-$$"
NAMESPACE="ovlrun-bench-$$"
CONTAINERD_PID=""

cleanup() {
    set +e
    [[ -n "${PODMAN[*]:-}" ]] && "${PODMAN[@]}" rm --all --force --time=0 >/dev/null 2>&1
    [[ -n "$CONTAINERD_PID" ]] && kill "$CONTAINERD_PID" 2>/dev/null && wait "$CONTAINERD_PID" 2>/dev/null
    # The shims and conmons name the work dir on their command lines.
    local pid
    for pid in $(pgrep -f -- "$WORK/"); do
        [[ "$pid" != "$$" ]] && kill -KILL "$pid" 2>/dev/null
    done
    grep -o " ${WORK}[^ ]*" /proc/self/mountinfo | sort -r | while read -r m; do umount -l "$m"; done
    local h d
    for h in /sys/fs/cgroup/*/; do
        for d in "$h${CGROUP_PARENT#/}" "$h$NAMESPACE"; do
            [[ -d "$d" ]] && find "$d" -depth -type d -exec rmdir {} + 2>/dev/null
        done
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

# The nofile and nproc limits a container may ask for here (podman's defaults exceed the
# hard limits, which root cannot raise without CAP_SYS_RESOURCE; podman lowers its own
# nproc to pid_max).
NOFILE="$(ulimit -Hn)"
NPROC="$(ulimit -Hu)"
PID_MAX="$(cat /proc/sys/kernel/pid_max)"
[[ "$NPROC" == unlimited || "$NPROC" -gt "$PID_MAX" ]] && NPROC="$PID_MAX"
cat >"$WORK/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=$NOFILE:$NOFILE", "nproc=$NPROC:$NPROC"]
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$WORK/events.log"
tmp_dir = "$WORK/tmp"
EOF
cat >"$WORK/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$WORK/root"
runroot = "$WORK/runroot"
EOF
export CONTAINERS_CONF="$WORK/containers.conf" CONTAINERS_STORAGE_CONF="$WORK/storage.conf"
PODMAN=(podman --root "$WORK/root" --runroot "$WORK/runroot")

tar -C "$REPO/examples/rootfs" -cf "$WORK/rootfs.tar" .
"${PODMAN[@]}" import "$WORK/rootfs.tar" "$IMAGE" >/dev/null 2>&1
"${PODMAN[@]}" save --format oci-archive -o "$WORK/rootfs-oci.tar" "$IMAGE" >/dev/null 2>&1

cat >"$WORK/containerd.toml" <<EOF
version = 2
root = "$WORK/containerd/root"
state = "$WORK/containerd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing", "io.containerd.internal.v1.opt"]
[grpc]
  address = "$WORK/c.sock"
[ttrpc]
  address = "$WORK/c.sock.ttrpc"
EOF
containerd --config "$WORK/containerd.toml" >"$WORK/containerd.log" 2>&1 &
CONTAINERD_PID=$!
CTR=(ctr --address "$WORK/c.sock" --namespace "$NAMESPACE")
for _ in $(seq 100); do "${CTR[@]}" version >/dev/null 2>&1 && break; sleep 0.05; done
"${CTR[@]}" images import "$WORK/rootfs-oci.tar" >/dev/null

# Prints the wall time of "$@" in nanoseconds, or "-" when it fails.
time_ns() {
    local start end
    start="$(date +%s%N)"
    if "$@" >/dev/null 2>>"$WORK/failures.log"; then
        end="$(date +%s%N)"
        echo $((end - start))
    else
        echo -
    fi
}

podman_run() {
    "${PODMAN[@]}" --runtime "$1" run --rm --network none --cgroup-parent "$CGROUP_PARENT" "$IMAGE" true
}

N=0
ctr_run() {
    N=$((N + 1))
    "${CTR[@]}" run --rm --fifo-dir "$WORK/fifo" --runc-binary "$1" --runc-root "$WORK/runc-root" \
        "$IMAGE" "bench-$N" true
}

# Prints the median of the numbers on stdin in ms with one decimal, or "-" when any is "-".
median_ms() {
    sort -n | awk '$1 == "-" { bad = 1 } { v[NR] = $1 }
        END {
            if (bad || NR == 0) { print "-"; exit }
            m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
            printf "%.1f\n", m / 1e6
        }'
}

printf 'bench-runtime: %s runs each; runc %s, ovlrun %s\n' "$RUNS" "$RUNC" "$OVLRUN"
printf '%-22s %12s %12s %8s\n' "client" "runc ms" "ovlrun ms" "ratio"
for client in podman_run ctr_run; do
    : >"$WORK/runc.times"
    : >"$WORK/ovlrun.times"
    "$client" "$RUNC" >/dev/null 2>&1 || true
    "$client" "$OVLRUN" >/dev/null 2>&1 || true
    for _ in $(seq "$RUNS"); do
        time_ns "$client" "$RUNC" >>"$WORK/runc.times"
        time_ns "$client" "$OVLRUN" >>"$WORK/ovlrun.times"
    done
    runc_ms="$(median_ms <"$WORK/runc.times")"
    ovlrun_ms="$(median_ms <"$WORK/ovlrun.times")"
    ratio=-
    if [[ "$runc_ms" != - && "$ovlrun_ms" != - ]]; then
        ratio="$(awk -v a="$ovlrun_ms" -v b="$runc_ms" 'BEGIN { printf "%.2f", a / b }')"
    fi
    label="${client/_run/ run --rm}"
    printf '%-22s %12s %12s %8s\n' "$label" "$runc_ms" "$ovlrun_ms" "$ratio"
done
if [[ -s "$WORK/failures.log" ]]; then
    printf 'bench-runtime: some runs failed; the first error:\n'
    head -3 "$WORK/failures.log"
fi
