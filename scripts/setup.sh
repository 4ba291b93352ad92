#!/usr/bin/env bash
# Installs what ovlrun's tests and benchmarks need on a Debian bookworm machine, as root.
#
# Idempotent: every step checks first and prints one line only when it changes something,
# so running it twice prints "setup: nothing to do" the second time.
#
#   bash scripts/setup.sh
set -euo pipefail

# Debian packages, and why each is here:
#   fuse3            fusermount3, /etc/fuse.conf (FUSE mounts and unmounts)
#   fuse-overlayfs   the peer that scripts/bench.sh measures against
#   busybox-static   scripts/mkrootfs.sh builds examples/rootfs from it; launcher tests run it
#   uidmap           newuidmap/newgidmap for rootless launches with a full id range
#   attr acl         getfattr/setfattr, getfacl/setfacl for xattr and ACL checks
#   fio              scripts/bench.sh workloads
#   libacl1-dev      pjdfstest links libacl when `cargo install` builds it
#   build-essential pkg-config   compilers for crates with C parts (pjdfstest's deps)
#   and the shellcheck linter for these scripts
#   util-linux       unshare, mount, findmnt, mountpoint, losetup
#   e2fsprogs        mkfs.ext4 for scripts/bench.sh's scratch filesystem
#   util-linux-extra fincore: the page-cache fill tests count cached bytes with it
#   passwd           useradd, groupadd
#   bubblewrap       scripts/bench.sh times its start beside ovlrun's and unshare's
#   libseccomp-dev   the libseccomp crate links it to compile the sessions' system-call filter
#   podman conmon containerd runc buildah   the container managers whose OCI runtime ovlrun can
#                    be (tests/it/runtime.rs); runc is the reference runtime; conmon is podman's
#                    monitor (a Depends, named so the list says it)
#   slirp4netns catatonit   rootless podman's network helper and its `--init`
#   rsync            scripts/bench-commit.sh times `rsync -a` beside `ovlrun commit`
#   docker.io        dockerd, which the tests start themselves (no systemd here; the package
#                    cannot start it, and need not)
APT_PACKAGES=(
    fuse3 fuse-overlayfs busybox-static uidmap attr acl fio libacl1-dev
    build-essential pkg-config shellcheck util-linux passwd e2fsprogs util-linux-extra
    bubblewrap libseccomp-dev rsync
    podman conmon containerd runc buildah slirp4netns catatonit docker.io
)

# The unprivileged user that launcher tests run ovlrun as.
TEST_USER=ovlrun-test

# pjdfstest 0.2 switches to two dummy users, each in its own primary group: `nobody`
# (group nogroup on Debian, already there) and `tests` (scripts/pjdfstest.sh names both).
PJDFSTEST_USERS=(tests)

CARGO_BIN="${CARGO_HOME:-$HOME/.cargo}/bin"

changed=0

say() {
    printf 'setup: %s\n' "$*"
    changed=1
}

die() {
    printf 'setup: error: %s\n' "$*" >&2
    exit 1
}

install_apt_packages() {
    local missing=() pkg
    for pkg in "${APT_PACKAGES[@]}"; do
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed'; then
            missing+=("$pkg")
        fi
    done
    ((${#missing[@]} == 0)) && return 0
    say "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

install_pjdfstest() {
    export PATH="$CARGO_BIN:$PATH"
    command -v pjdfstest >/dev/null && return 0
    say "cargo install pjdfstest --locked (into $CARGO_BIN; takes a few minutes)"
    cargo install pjdfstest --locked --quiet
    command -v pjdfstest >/dev/null || die "pjdfstest is not on PATH after cargo install"
}

open_dev_fuse() {
    [[ -c /dev/fuse ]] || die "/dev/fuse is missing (is the fuse module loaded?)"
    if [[ "$(stat -c %a /dev/fuse)" != 666 ]]; then
        say "chmod 0666 /dev/fuse"
        chmod 0666 /dev/fuse
    fi
}

# Lets an unprivileged user's FUSE mount admit other users when it asks for allow_other.
allow_other_for_users() {
    if ! grep -qE '^[[:space:]]*user_allow_other' /etc/fuse.conf 2>/dev/null; then
        say "enable user_allow_other in /etc/fuse.conf"
        echo user_allow_other >>/etc/fuse.conf
    fi
}

create_test_user() {
    if ! getent passwd "$TEST_USER" >/dev/null; then
        say "create user $TEST_USER"
        # useradd gives a normal user a /etc/subuid and /etc/subgid range (login.defs).
        useradd --create-home --shell /bin/bash --user-group "$TEST_USER"
    fi
    if ! grep -q "^$TEST_USER:" /etc/subuid 2>/dev/null; then
        local start
        start="$(next_free_subid /etc/subuid)"
        say "give $TEST_USER subordinate uids $start-$((start + 65535))"
        usermod --add-subuids "$start-$((start + 65535))" "$TEST_USER"
    fi
    if ! grep -q "^$TEST_USER:" /etc/subgid 2>/dev/null; then
        local start
        start="$(next_free_subid /etc/subgid)"
        say "give $TEST_USER subordinate gids $start-$((start + 65535))"
        usermod --add-subgids "$start-$((start + 65535))" "$TEST_USER"
    fi
}

# Rootless podman and buildah want an XDG_RUNTIME_DIR of the user's own; with no systemd
# here, nothing makes /run/user/UID at login. (The tests give each podman its own under the
# test's directory; this one is for running them by hand: XDG_RUNTIME_DIR=/run/user/UID.)
create_test_user_runtime_dir() {
    local uid dir
    uid="$(id -u "$TEST_USER")"
    dir="/run/user/$uid"
    if [[ ! -d "$dir" ]]; then
        say "create $dir (XDG_RUNTIME_DIR of $TEST_USER)"
        mkdir -p /run/user
        install -d -m 0700 -o "$TEST_USER" -g "$(id -g "$TEST_USER")" "$dir"
    fi
}

# Prints the first id past every range in a /etc/subuid-style file (100000 when empty).
next_free_subid() {
    awk -F: 'BEGIN { next_id = 100000 }
        NF == 3 && $2 + $3 > next_id { next_id = $2 + $3 }
        END { print next_id }' "$1" 2>/dev/null || echo 100000
}

create_pjdfstest_users() {
    getent passwd nobody >/dev/null || die "user nobody is missing"
    getent group nogroup >/dev/null || die "group nogroup is missing"
    local user
    for user in "${PJDFSTEST_USERS[@]}"; do
        if ! getent passwd "$user" >/dev/null; then
            say "create pjdfstest dummy user $user"
            useradd --system --user-group --no-create-home --home-dir / \
                --shell /usr/sbin/nologin --comment "Dummy user for pjdfstest" "$user"
        fi
    done
}

main() {
    [[ "$(id -u)" == 0 ]] || die "run as root (it installs packages and creates users)"
    install_apt_packages
    install_pjdfstest
    open_dev_fuse
    allow_other_for_users
    create_test_user
    create_test_user_runtime_dir
    create_pjdfstest_users
    bash "$(dirname "${BASH_SOURCE[0]}")/mkrootfs.sh" # completes examples/rootfs (busybox)
    ((changed)) || echo "setup: nothing to do"
}

main "$@"
