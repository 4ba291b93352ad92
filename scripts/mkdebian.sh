#!/usr/bin/env bash
# Builds real Debian trees for the tests that point ovlrun at a distribution (tests/it/realtree.rs).
#
#   bash scripts/mkdebian.sh [--user NAME] [DIR]      (DIR defaults to target/debian/bookworm)
#
# Makes, each only when it is missing:
# - DIR: `debootstrap --variant=minbase bookworm`, from the mirror of this machine's own apt
#   configuration (the Debian main suite in /etc/apt/sources.list.d/*.sources, else the deb
#   lines of /etc/apt/sources.list): no mirror address is written here.
# - DIR-build: a copy of DIR with gcc, libc6-dev and make installed (chroot + apt-get).
# - with --user NAME, DIR-NAME: a copy of DIR as NAME would have made it by debootstrapping in
#   its own user namespace: id 0 becomes NAME's uid/gid, id N (N >= 1) becomes the start of
#   NAME's /etc/subuid (/etc/subgid) range + N - 1. Setuid/setgid bits are kept.
#
# Cached and crash-safe: a tree is built as T.tmp (a leftover one is removed first) and
# renamed to T only when complete; T/.ovlrun-debian-ok marks a complete tree, and a run that
# finds every marker does nothing ("mkdebian: nothing to do"). Needs root (debootstrap, chroot,
# chown); installs the package debootstrap with apt-get when it is missing.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SUITE=bookworm
MARKER=.ovlrun-debian-ok
BUILD_PACKAGES=(gcc libc6-dev make)

die() {
    printf 'mkdebian: error: %s\n' "$*" >&2
    exit 1
}

say() {
    printf 'mkdebian: %s\n' "$*"
}

usage() {
    printf 'usage: %s [--user NAME] [DIR]\n' "$0" >&2
    exit 2
}

install_debootstrap() {
    command -v debootstrap >/dev/null && return 0
    say "apt-get install debootstrap"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || die "apt-get update failed"
    apt-get install -y -qq --no-install-recommends debootstrap >/dev/null \
        || die "apt-get install debootstrap failed"
    command -v debootstrap >/dev/null || die "debootstrap is still missing after apt-get install"
}

# Prints the first URI of a deb822 stanza that carries suite $SUITE and component main.
mirror_from_sources_files() {
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -f "$f" ]] || continue
        # Stanzas are separated by blank lines; fields are "Name: value..." (case-insensitive).
        awk -v suite="$SUITE" '
            function flush() {
                if (uris != "" && has_suite && has_main && is_deb && !found) { print uris; found = 1 }
                uris = ""; has_suite = 0; has_main = 0; is_deb = 0
            }
            /^[[:space:]]*$/ { flush(); next }
            /^[[:space:]]*#/ { next }
            {
                line = $0; sub(/^[^:]*:[[:space:]]*/, "", line)
                key = tolower($1)
                n = split(line, v, /[[:space:]]+/)
                if (key == "uris:") { uris = v[1] }
                if (key == "types:") { for (i = 1; i <= n; i++) if (v[i] == "deb") is_deb = 1 }
                if (key == "suites:") { for (i = 1; i <= n; i++) if (v[i] == suite) has_suite = 1 }
                if (key == "components:") { for (i = 1; i <= n; i++) if (v[i] == "main") has_main = 1 }
            }
            END { flush() }
        ' "$f"
    done | head -n 1
}

# Prints the URI of the first "deb [options] URI SUITE ... main" line of sources.list.
mirror_from_sources_list() {
    [[ -f /etc/apt/sources.list ]] || return 0
    awk -v suite="$SUITE" '
        $1 == "deb" {
            i = 2
            if ($i ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
            if ($(i + 1) == suite) { for (j = i + 2; j <= NF; j++) if ($j == "main") { print $i; exit } }
        }
    ' /etc/apt/sources.list
}

find_mirror() {
    local m
    m="$(mirror_from_sources_files)"
    [[ -n "$m" ]] || m="$(mirror_from_sources_list)"
    [[ -n "$m" ]] || die "no deb source for suite $SUITE, component main in /etc/apt/sources.list.d/*.sources or /etc/apt/sources.list"
    printf '%s\n' "$m"
}

# Removes a leftover T.tmp of an interrupted run. Mounts of an interrupted chroot step lived
# in a private mount namespace (see in_chroot) and died with it, so nothing is mounted there.
clear_tmp() {
    local tmp="$1"
    if [[ -e "$tmp" ]]; then
        say "remove leftover $tmp"
        rm -rf --one-file-system "$tmp" || die "cannot remove $tmp"
    fi
}

complete() {
    [[ -f "$1/$MARKER" ]]
}

finish() {
    local tmp="$1" dest="$2"
    touch "$tmp/$MARKER" || die "cannot write $tmp/$MARKER"
    chown --reference="$tmp" "$tmp/$MARKER" || die "cannot chown $tmp/$MARKER"
    if [[ -e "$dest" ]]; then
        # An incomplete tree (no marker) in the way, e.g. from before this script cached.
        rm -rf --one-file-system "$dest" || die "cannot remove incomplete $dest"
    fi
    mv "$tmp" "$dest" || die "cannot rename $tmp to $dest"
}

# Runs a command chrooted into $1 with /proc and /dev mounted, in a private mount namespace so
# that the mounts go away with the command, even when it is killed.
in_chroot() {
    local root="$1"
    shift
    # shellcheck disable=SC2016 # expanded by the inner sh
    unshare --mount --propagation private -- sh -ec '
        root="$1"; shift
        mount -t proc proc "$root/proc"
        mount --rbind /dev "$root/dev"
        exec chroot "$root" "$@"
    ' in_chroot "$root" "$@"
}

make_minbase() {
    local dest="$1" tmp="$1.tmp" mirror start
    complete "$dest" && return 0
    install_debootstrap
    mirror="$(find_mirror)"
    clear_tmp "$tmp"
    mkdir -p "$(dirname "$dest")"
    say "debootstrap --variant=minbase $SUITE $dest (mirror $mirror)"
    start=$SECONDS
    debootstrap --variant=minbase "$SUITE" "$tmp" "$mirror" >"$dest.log" 2>&1 \
        || die "debootstrap failed; see $dest.log"
    [[ -x "$tmp/usr/bin/apt-get" ]] || die "debootstrap made no usr/bin/apt-get in $tmp"
    finish "$tmp" "$dest"
    say "made $dest in $((SECONDS - start)) s"
}

make_build() {
    local base="$1" dest="$2" tmp="$2.tmp" start
    complete "$dest" && return 0
    clear_tmp "$tmp"
    say "copy $base to $dest, apt-get install ${BUILD_PACKAGES[*]}"
    start=$SECONDS
    cp -a "$base" "$tmp" || die "cp -a $base $tmp failed"
    rm -f "$tmp/$MARKER"
    {
        in_chroot "$tmp" apt-get update \
            && in_chroot "$tmp" env DEBIAN_FRONTEND=noninteractive \
                apt-get install -y --no-install-recommends "${BUILD_PACKAGES[@]}" \
            && in_chroot "$tmp" apt-get clean
    } >"$dest.log" 2>&1 || die "apt-get install ${BUILD_PACKAGES[*]} in $tmp failed; see $dest.log"
    rm -rf "$tmp/var/lib/apt/lists/"* 2>/dev/null || true
    in_chroot "$tmp" sh -c 'command -v gcc && command -v make' >/dev/null \
        || die "gcc or make missing in $tmp after apt-get install"
    finish "$tmp" "$dest"
    say "made $dest in $((SECONDS - start)) s"
}

# Prints the start of NAME's range in /etc/subuid or /etc/subgid ($1), matched by name or id.
subid_start() {
    local file="$1" name="$2" id="$3"
    awk -F: -v n="$name" -v i="$id" '($1 == n || $1 == i) && $3 > 0 { print $2; exit }' "$file"
}

# The same tree as NAME would own it after debootstrapping in its own user namespace.
make_user_copy() {
    local base="$1" user="$2" dest="$3" tmp="$3.tmp" uid gid subuid subgid start
    complete "$dest" && return 0
    uid="$(id -u "$user")" || die "no user $user"
    gid="$(id -g "$user")"
    subuid="$(subid_start /etc/subuid "$user" "$uid")"
    subgid="$(subid_start /etc/subgid "$user" "$uid")"
    [[ -n "$subuid" && -n "$subgid" ]] || die "$user has no range in /etc/subuid and /etc/subgid"
    clear_tmp "$tmp"
    say "copy $base to $dest, owned by $user's ids ($uid/$gid, ranges from $subuid/$subgid)"
    start=$SECONDS
    cp -a "$base" "$tmp" || die "cp -a $base $tmp failed"
    rm -f "$tmp/$MARKER"

    # chown clears setuid/setgid bits (also for root), so note them first and restore them.
    local special
    special="$(mktemp)"
    find "$tmp" -xdev ! -type l -perm /6000 -printf '%m\0%p\0' >"$special"

    # Old ids are small (0..65535); new ones are $uid/$gid and >= the range starts. If the two
    # sets met, a later pass would move files that an earlier pass had already moved.
    local ids id new
    ids="$(find "$tmp" -xdev -printf '%U\n' | sort -un)"
    for id in $ids; do
        if ((id == 0)); then new=$uid; else new=$((subuid + id - 1)); fi
        if grep -qx "$new" <<<"$ids" && ((new != id)); then
            die "uid $id maps to $new, which the tree also holds"
        fi
        chown -hR --from="$id" "$new" "$tmp" || die "chown --from=$id $new failed"
    done
    ids="$(find "$tmp" -xdev -printf '%G\n' | sort -un)"
    for id in $ids; do
        if ((id == 0)); then new=$gid; else new=$((subgid + id - 1)); fi
        if grep -qx "$new" <<<"$ids" && ((new != id)); then
            die "gid $id maps to $new, which the tree also holds"
        fi
        chown -hR --from=":$id" ":$new" "$tmp" || die "chown --from=:$id :$new failed"
    done

    local mode path
    while IFS= read -r -d '' mode && IFS= read -r -d '' path; do
        chmod "$mode" "$path" || die "cannot restore mode $mode of $path"
    done <"$special"
    rm -f "$special"
    finish "$tmp" "$dest"
    say "made $dest in $((SECONDS - start)) s"
}

main() {
    local user="" dir=""
    while (($#)); do
        case "$1" in
            --user)
                (($# >= 2)) || usage
                user="$2"
                shift 2
                ;;
            -h | --help) usage ;;
            -*) usage ;;
            *)
                [[ -z "$dir" ]] || usage
                dir="$1"
                shift
                ;;
        esac
    done
    [[ -n "$dir" ]] || dir="$REPO/target/debian/$SUITE"
    dir="${dir%/}"
    [[ "$(id -u)" == 0 ]] || die "needs root (debootstrap, chroot, chown)"

    local before=$SECONDS did=0
    complete "$dir" && complete "$dir-build" && { [[ -z "$user" ]] || complete "$dir-$user"; } \
        && { echo "mkdebian: nothing to do"; return 0; }
    make_minbase "$dir"
    make_build "$dir" "$dir-build"
    [[ -z "$user" ]] || make_user_copy "$dir" "$user" "$dir-$user"
    did=$((SECONDS - before))
    say "done in $did s"
}

main "$@"
