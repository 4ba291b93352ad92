#!/usr/bin/env bash
# Runs pjdfstest (crates.io, 0.2.x) against an overlay mount, as root.
#
#   bash scripts/pjdfstest.sh [--fs ovlrun|kernel]
#
# --fs ovlrun (default): an `ovlrun mount` of a small lower; the set of failed tests must equal
#   tests/pjdfstest/known-failures.txt ("<test name>  # reason" per line). An unlisted failure
#   fails the run, and so does a listed test that passes: the list only shrinks.
# --fs kernel: the kernel overlayfs over the same kind of tree (userxattr, like ovlrun's upper
#   format), for comparison; it only reports counts.
#
# Everything runs in a private mount namespace (the script re-executes itself under
# `unshare -m`), so no mount can outlive it on the host, and a trap unmounts anyway.
# Environment: OVLRUN_BIN (the binary; default target/debug/ovlrun, else target/release/ovlrun),
# PJDFSTEST_TIMEOUT (seconds for the whole pjdfstest run, default 1800).
# The full pjdfstest output is kept in target/pjdfstest-<fs>.log.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KNOWN_FAILURES="$REPO/tests/pjdfstest/known-failures.txt"
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
# pjdfstest colours its verdicts; plain text is what we parse.
export NO_COLOR=1

FS=ovlrun
WORKDIR=""     # /var/tmp/ovlrun-pjdfs.XXXX: lower, upper, work, mnt, secondary, config
MNT=""         # the overlay mountpoint
OVLRUN_PID=""  # the `ovlrun mount` process we started, if any

die() {
    printf 'pjdfstest.sh: error: %s\n' "$*" >&2
    exit 1
}

usage() {
    echo "usage: $0 [--fs ovlrun|kernel]" >&2
    exit 2
}

parse_args() {
    while (($#)); do
        case "$1" in
            --fs)
                (($# >= 2)) || usage
                FS="$2"
                shift 2
                ;;
            --fs=*)
                FS="${1#--fs=}"
                shift
                ;;
            -h | --help) usage ;;
            *) usage ;;
        esac
    done
    [[ "$FS" == ovlrun || "$FS" == kernel ]] || usage
}

# True when $1 is a mountpoint in this mount namespace.
is_mounted() {
    awk -v mnt="$1" '$5 == mnt { found = 1 } END { exit !found }' /proc/self/mountinfo
}

# Unmounts $1 if mounted, lazily as a last resort so cleanup never hangs on a busy mount.
unmount_if_mounted() {
    local mnt="$1"
    is_mounted "$mnt" || return 0
    umount "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null || true
}

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [[ -n "$MNT" ]]; then
        unmount_if_mounted "$MNT"
    fi
    if [[ -n "$OVLRUN_PID" ]]; then
        # After the unmount ovlrun exits by itself; SIGTERM covers a failed or hung start.
        kill -TERM "$OVLRUN_PID" 2>/dev/null || true
        wait "$OVLRUN_PID" 2>/dev/null || true
    fi
    if [[ -n "$WORKDIR" ]]; then
        unmount_if_mounted "$WORKDIR/secondary"
        # Never delete through a mount that is still there.
        if awk -v dir="$WORKDIR/" 'index($5, dir) == 1 { found = 1 } END { exit !found }' \
            /proc/self/mountinfo; then
            echo "pjdfstest.sh: $WORKDIR still has mounts; left in place" >&2
        else
            rm -rf "$WORKDIR"
        fi
    fi
    exit "$status"
}

# A few files, directories and a symlink, so the root is a real merged directory.
make_lower() {
    local lower="$1"
    mkdir -p "$lower/dir/sub" "$lower/empty"
    echo "lower file" >"$lower/file"
    echo "nested lower file" >"$lower/dir/sub/file"
    ln -s file "$lower/link"
    chmod 0755 "$lower" "$lower/dir" "$lower/dir/sub" "$lower/empty"
}

ovlrun_binary() {
    if [[ -n "${OVLRUN_BIN:-}" ]]; then
        echo "$OVLRUN_BIN"
        return
    fi
    local target="${CARGO_TARGET_DIR:-$REPO/target}" profile
    for profile in debug release; do
        if [[ -x "$target/$profile/ovlrun" ]]; then
            echo "$target/$profile/ovlrun"
            return
        fi
    done
    die "no ovlrun binary under $target (run cargo build first, or set OVLRUN_BIN)"
}

# Waits until $MNT shows in mountinfo; fails if ovlrun exits first or after 30 s.
wait_for_ovlrun_mount() {
    local tries
    for ((tries = 0; tries < 300; tries++)); do
        is_mounted "$MNT" && return 0
        if ! kill -0 "$OVLRUN_PID" 2>/dev/null; then
            local status=0
            wait "$OVLRUN_PID" || status=$?
            OVLRUN_PID=""
            cat "$WORKDIR/ovlrun.log" >&2
            die "ovlrun mount exited with status $status before mounting $MNT"
        fi
        sleep 0.1
    done
    cat "$WORKDIR/ovlrun.log" >&2
    die "ovlrun did not mount $MNT within 30 s"
}

mount_overlay() {
    local lower="$WORKDIR/lower" upper="$WORKDIR/upper" work="$WORKDIR/work"
    case "$FS" in
        kernel)
            mount -t overlay overlay \
                -o "userxattr,lowerdir=$lower,upperdir=$upper,workdir=$work" "$MNT"
            ;;
        ovlrun)
            local bin
            bin="$(ovlrun_binary)"
            # --pdeathsig: should this script die without running its trap, ovlrun still gets
            # SIGTERM, unmounts and exits instead of serving an orphaned mount.
            setpriv --pdeathsig TERM -- "$bin" mount --lower "$lower" --upper "$upper" \
                --work "$work" "$MNT" >"$WORKDIR/ovlrun.log" 2>&1 &
            OVLRUN_PID=$!
            wait_for_ovlrun_mount
            ;;
    esac
}

write_config() {
    local config="$1" nobody_group
    nobody_group="$(id -gn nobody)"
    # Features every Linux local filesystem has; rename_ctime: Linux (and overlayfs) update
    # ctime on rename. allow_remount stays off: the EROFS tests' `mount -o remount,ro`
    # fails now and then with EBUSY even on the kernel overlayfs, which would make the
    # verdicts random. The two dummy users are the ones scripts/setup.sh makes sure exist.
    cat >"$config" <<EOF
[features]
posix_fallocate = {}
rename_ctime = {}
utime_now = {}
utimensat = {}

[settings]
naptime = 0.01
allow_remount = false

[dummy_auth]
entries = [["nobody", "$nobody_group"], ["tests", "tests"]]
EOF
}

# Prints the test names of known-failures.txt, one per line, sorted.
known_failures() {
    [[ -f "$KNOWN_FAILURES" ]] || return 0
    sed -e 's/#.*//' -e 's/[[:space:]]*$//' -e 's/^[[:space:]]*//' "$KNOWN_FAILURES" \
        | awk 'NF' | sort -u
}

# Prints the names of tests whose verdict in pjdfstest log $1 is $2 (ok, FAILED, skipped).
tests_with_verdict() {
    awk -v verdict="$2" '
        $NF == verdict && NF == 2 { print $1 }
        verdict == "FAILED" && / PASSED UNEXPECTEDLY$/ { print $1 }
    ' "$1" | sort -u
}

run_pjdfstest() {
    local log="$1" status=0
    mkdir -p "$(dirname "$log")"
    echo "pjdfstest.sh: running pjdfstest on $FS overlay at $MNT (log: $log)"
    # pjdfstest exits non-zero when a test fails; the verdicts are judged below.
    (cd "$WORKDIR" && timeout -k 10 "${PJDFSTEST_TIMEOUT:-1800}" \
        pjdfstest -c "$WORKDIR/pjdfstest.toml" -s "$WORKDIR/secondary" -p "$MNT") \
        >"$log" 2>&1 || status=$?
    if ((status == 124 || status == 137)); then
        tail -5 "$log" >&2
        die "pjdfstest timed out (hung filesystem?)"
    fi
    grep -q '^Summary: ' "$log" || {
        tail -20 "$log" >&2
        die "pjdfstest did not finish (status $status)"
    }
}

# Compares the failed set with known-failures.txt and prints the verdict line.
judge() {
    local log="$1" passed failed skipped
    passed="$(tests_with_verdict "$log" ok)"
    failed="$(tests_with_verdict "$log" FAILED)"
    skipped="$(tests_with_verdict "$log" skipped)"
    local n_passed n_failed n_skipped
    n_passed="$(count_lines "$passed")"
    n_failed="$(count_lines "$failed")"
    n_skipped="$(count_lines "$skipped")"

    if [[ "$FS" == kernel ]]; then
        echo "pjdfstest ($FS): $n_passed passed, $n_failed failed"
        echo "pjdfstest ($FS): $n_skipped skipped, $((n_passed + n_failed + n_skipped)) total"
        if ((n_failed)); then
            echo "failed on the kernel overlayfs:"
            indent "$failed"
        fi
        return 0
    fi

    local known unexpected now_pass stale n_known
    known="$(known_failures)"
    unexpected="$(comm -23 <(printf '%s\n' "$failed" | awk NF) <(printf '%s\n' "$known" | awk NF))"
    now_pass="$(comm -12 <(printf '%s\n' "$passed" | awk NF) <(printf '%s\n' "$known" | awk NF))"
    # Listed, but neither failed nor passed: renamed, removed or skipped now.
    stale="$(comm -23 <(printf '%s\n' "$known" | awk NF) \
        <(printf '%s\n%s\n' "$failed" "$passed" | awk NF | sort -u))"
    n_known="$(count_lines "$(comm -12 <(printf '%s\n' "$failed" | awk NF) \
        <(printf '%s\n' "$known" | awk NF))")"

    local ok=1 name
    if [[ -n "$unexpected" ]]; then
        ok=0
        echo "pjdfstest: failures not in ${KNOWN_FAILURES#"$REPO/"}:"
        for name in $unexpected; do
            echo "  $name"
            # The lines after a FAILED verdict hold the assertion message.
            awk -v name="$name" '
                $1 == name && $NF == "FAILED" { show = 1; next }
                show && /^\t/ { print "      " substr($0, 2); next }
                { show = 0 }
            ' "$log" | head -5
        done
    fi
    if [[ -n "$now_pass" ]]; then
        ok=0
        echo "pjdfstest: listed as known failures but pass now (remove them from the list):"
        indent "$now_pass"
    fi
    if [[ -n "$stale" ]]; then
        ok=0
        echo "pjdfstest: listed as known failures but did not run (renamed, or skipped now):"
        indent "$stale"
    fi
    echo "pjdfstest ($FS): $n_passed passed, $n_failed failed ($n_known known)"
    echo "pjdfstest ($FS): $n_skipped skipped, $((n_passed + n_failed + n_skipped)) total"
    ((ok))
}

# Prints the lines of $1 indented by two spaces.
indent() {
    local line
    while IFS= read -r line; do
        printf '  %s\n' "$line"
    done <<<"$1"
}

count_lines() {
    if [[ -z "$1" ]]; then echo 0; else printf '%s\n' "$1" | wc -l; fi
}

# Unmounts ovlrun the way a user would and checks that it then exits 0 by itself.
stop_ovlrun() {
    [[ -n "$OVLRUN_PID" ]] || return 0
    umount "$MNT" || {
        echo "pjdfstest.sh: umount $MNT failed" >&2
        return 1
    }
    local tries status=0
    for ((tries = 0; tries < 100; tries++)); do
        kill -0 "$OVLRUN_PID" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$OVLRUN_PID" 2>/dev/null; then
        echo "pjdfstest.sh: ovlrun still runs 10 s after its mount was unmounted" >&2
        return 1
    fi
    wait "$OVLRUN_PID" || status=$?
    OVLRUN_PID=""
    if ((status)); then
        echo "pjdfstest.sh: ovlrun exited with status $status after umount; its log ends:" >&2
        tail -20 "$WORKDIR/ovlrun.log" >&2
        return 1
    fi
}

# Runs inside the private mount namespace.
main_in_namespace() {
    [[ "$(id -u)" == 0 ]] || die "run as root (pjdfstest switches users; mounting needs root)"
    command -v pjdfstest >/dev/null || die "pjdfstest not found (run scripts/setup.sh)"
    getent passwd tests >/dev/null || die "user tests missing (run scripts/setup.sh)"
    # Nothing mounted here may propagate back to the host, whatever the caller's setup was.
    mount --make-rprivate /
    umask 022
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM

    # World-searchable: pjdfstest switches to nobody/tests, who must reach the mount.
    WORKDIR="$(mktemp -d /var/tmp/ovlrun-pjdfs.XXXXXX)"
    chmod 0755 "$WORKDIR"
    MNT="$WORKDIR/mnt"
    mkdir -m 0755 "$WORKDIR/upper" "$WORKDIR/work" "$MNT" "$WORKDIR/secondary"
    make_lower "$WORKDIR/lower"
    # A second filesystem for the EXDEV tests (link/rename across filesystems).
    mount -t tmpfs -o size=16m,mode=0755 pjdfs-secondary "$WORKDIR/secondary"
    write_config "$WORKDIR/pjdfstest.toml"
    mount_overlay

    local log="${CARGO_TARGET_DIR:-$REPO/target}/pjdfstest-$FS.log"
    run_pjdfstest "$log"
    local status=0
    judge "$log" || status=1
    stop_ovlrun || status=1
    return "$status"
}

main() {
    parse_args "$@"
    if [[ "${OVLRUN_PJDFS_IN_NS:-}" != 1 ]]; then
        [[ "$(id -u)" == 0 ]] || die "run as root (it mounts filesystems)"
        OVLRUN_PJDFS_IN_NS=1 exec unshare --mount --propagation private \
            bash "${BASH_SOURCE[0]}" --fs "$FS"
    fi
    main_in_namespace
}

main "$@"
