#!/usr/bin/env bash
# Completes examples/rootfs, the quick-start tree, from Debian's busybox-static package.
#
# git holds only the tree's text files (etc/...). This script adds what git cannot or should
# not hold: the busybox binary, one symlink per applet, and the empty directories (tmp with
# mode 1777). The generated paths are listed in examples/rootfs/.gitignore.
#
# Idempotent: it compares before it changes anything, prints one line per change, and prints
# "mkrootfs: nothing to do" when the tree is already complete. Installs busybox-static with
# apt-get when it is missing (that needs root); everything else works as any user who can
# write examples/rootfs.
#
#   bash scripts/mkrootfs.sh
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROOTFS="$REPO/examples/rootfs"
PACKAGE=busybox-static

# Directories the tree needs and git cannot hold while they are empty, with their modes.
# root is 0755, not Debian's 0700: in a rootless session the host owner of these files is
# unmapped, and a 0700 directory owned by an unmapped id cannot be entered, even by root in
# the sandbox.
DIRS=(
    "bin 0755" "sbin 0755" "usr 0755" "usr/bin 0755" "usr/sbin 0755"
    "etc 0755" "root 0755" "home 0755" "home/user 0755"
    "dev 0755" "proc 0555" "sys 0555" "run 0755" "mnt 0755"
    "tmp 1777" "var 0755" "var/tmp 1777"
)

changed=0

say() {
    printf 'mkrootfs: %s\n' "$*"
    changed=1
}

die() {
    printf 'mkrootfs: error: %s\n' "$*" >&2
    exit 1
}

package_installed() {
    dpkg-query -W -f='${Status}' "$PACKAGE" 2>/dev/null | grep -q 'ok installed'
}

install_package() {
    package_installed && return 0
    command -v apt-get >/dev/null || die "$PACKAGE is not installed and there is no apt-get"
    [[ "$(id -u)" == 0 ]] || die "$PACKAGE is not installed; run: sudo apt-get install $PACKAGE"
    say "apt-get install $PACKAGE"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || die "apt-get update failed"
    apt-get install -y -qq --no-install-recommends "$PACKAGE" >/dev/null \
        || die "apt-get install $PACKAGE failed"
    package_installed || die "$PACKAGE is still not installed after apt-get install"
}

# Prints the path of the busybox binary that the package installed (/bin/busybox on Debian).
package_busybox() {
    local path
    path="$(dpkg -L "$PACKAGE" | grep -E '/busybox$' | head -n 1)" \
        || die "dpkg -L $PACKAGE lists no busybox binary"
    [[ -x "$path" ]] || die "$path (from dpkg -L $PACKAGE) is not an executable file"
    printf '%s\n' "$path"
}

make_dirs() {
    local entry dir mode
    for entry in "${DIRS[@]}"; do
        read -r dir mode <<<"$entry"
        if [[ -L "$ROOTFS/$dir" || (-e "$ROOTFS/$dir" && ! -d "$ROOTFS/$dir") ]]; then
            die "$ROOTFS/$dir exists and is not a directory"
        fi
        if [[ ! -d "$ROOTFS/$dir" ]]; then
            say "mkdir $dir"
            mkdir "$ROOTFS/$dir" || die "cannot create $ROOTFS/$dir"
        fi
        # stat prints the mode without a leading zero: 755, 1777.
        if [[ "$(stat -c %a "$ROOTFS/$dir")" != "${mode#0}" ]]; then
            say "chmod $mode $dir"
            chmod "$mode" "$ROOTFS/$dir" || die "cannot chmod $ROOTFS/$dir"
        fi
    done
}

install_busybox() {
    local src="$1" dest="$ROOTFS/bin/busybox"
    if [[ -f "$dest" && ! -L "$dest" ]] && cmp -s "$src" "$dest"; then
        [[ "$(stat -c %a "$dest")" == 755 ]] || chmod 0755 "$dest"
        return 0
    fi
    say "copy $src to bin/busybox"
    # Copied beside and renamed, so an interrupted run never leaves a half-written binary.
    install -m 0755 "$src" "$dest.tmp" || die "cannot copy $src to $dest.tmp"
    mv -f "$dest.tmp" "$dest" || die "cannot rename $dest.tmp to $dest"
}

# Prints "<path> <link target>" for every applet, paths relative to the rootfs.
#
# Relative targets (bin/ls -> busybox, usr/bin/env -> ../../bin/busybox) resolve the same
# inside the sandbox, under chroot, and when the tree is looked at from the host.
wanted_links() {
    local applet dir up
    "$ROOTFS/bin/busybox" --list-full | while read -r applet; do
        dir="${applet%/*}"
        case "$dir" in
            bin) up="" ;;
            sbin | usr) up="../" ;;
            usr/bin | usr/sbin) up="../../" ;;
            # linuxrc (an initrd's init), and any place we do not make.
            *) continue ;;
        esac
        [[ "$applet" == bin/busybox ]] && continue
        if [[ "$dir" == bin ]]; then
            printf '%s busybox\n' "$applet"
        else
            printf '%s %sbin/busybox\n' "$applet" "$up"
        fi
    done | sort
}

# Prints "<path> <link target>" for every symlink to busybox now in the applet directories.
present_links() {
    (cd "$ROOTFS" && find bin sbin usr/bin usr/sbin -maxdepth 1 -type l -printf '%p %l\n') \
        | awk '$2 ~ /(^|\/)busybox$/' | sort
}

make_links() {
    local wanted present path target made=0
    wanted="$(wanted_links)"
    [[ -n "$wanted" ]] || die "bin/busybox --list-full printed no applets"
    present="$(present_links)"
    # Missing, or pointing elsewhere: (re)create.
    while read -r path target; do
        [[ -n "$path" ]] || continue
        if [[ -e "$ROOTFS/$path" && ! -L "$ROOTFS/$path" ]]; then
            die "$ROOTFS/$path exists and is not a symlink; remove it and run again"
        fi
        ln -sfn "$target" "$ROOTFS/$path" || die "cannot link $ROOTFS/$path"
        made=$((made + 1))
    done < <(comm -23 <(printf '%s\n' "$wanted") <(printf '%s\n' "$present"))
    ((made == 0)) || say "make $made applet links to bin/busybox"
    # Now every wanted link is right, so what is left over are applets the installed busybox
    # no longer has.
    while read -r path target; do
        [[ -n "$path" ]] || continue
        say "remove $path (not an applet of this busybox)"
        rm -f "$ROOTFS/$path" || die "cannot remove $ROOTFS/$path"
    done < <(comm -13 <(printf '%s\n' "$wanted") <(present_links))
    [[ "$(present_links)" == "$wanted" ]] || die "applet links still differ from busybox --list-full"
}

# The tree must run on its own: a dynamically linked busybox would find no libc in it.
smoke_test() {
    local out
    if ldd "$ROOTFS/bin/busybox" >/dev/null 2>&1; then
        die "bin/busybox is dynamically linked; is $PACKAGE really the installed busybox?"
    fi
    out="$("$ROOTFS/bin/sh" -c 'echo ok' 2>&1)" || die "bin/sh does not run: $out"
    # No redirection to /dev/null inside: the tree's dev/ is empty, so it would create a file.
    if [[ "$(id -u)" == 0 ]]; then
        out="$(chroot "$ROOTFS" /bin/sh -c 'ls / && id -u' 2>&1)" \
            || die "chroot $ROOTFS /bin/sh fails: $out"
    fi
}

main() {
    [[ -d "$ROOTFS/etc" ]] || die "$ROOTFS/etc is missing: is this an ovlrun checkout?"
    install_package
    local src
    src="$(package_busybox)"
    make_dirs
    install_busybox "$src"
    make_links
    smoke_test
    ((changed)) || echo "mkrootfs: nothing to do"
}

main "$@"
