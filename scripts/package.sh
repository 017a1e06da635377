#!/bin/sh
# Builds the Debian package agentlab_<version>_amd64.deb with dpkg-buildpackage
# (debian/: debhelper with the CMake build system; debian/rules says why) and
# checks it with lintian.
#
# usage: scripts/package.sh [OUTDIR]     (default: build/package)
#
# The source is copied to OUTDIR/src first (the files git tracks, with their
# changes in the work tree; everything but build dirs outside git), so the
# tree stays clean and dpkg-buildpackage's results land in OUTDIR instead of
# the tree's parent directory. Needs the build dependencies of debian/control
# (scripts/setup.sh installs them) plus dpkg-dev, debhelper and lintian.
set -eu

top=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$top/build/package}
log() { printf 'package: %s\n' "$*" >&2; }

for tool in dpkg-buildpackage dh lintian; do
    command -v "$tool" >/dev/null 2>&1 || {
        log "$tool is missing: apt-get install dpkg-dev debhelper lintian (scripts/setup.sh does)"
        exit 1
    }
done

# The package's version is debian/changelog's; it must be the project's.
project=$(sed -n 's/^project(agentlab VERSION \([0-9.]*\).*/\1/p' "$top/CMakeLists.txt")
deb=$(dpkg-parsechangelog -l "$top/debian/changelog" -S Version)
if [ "${deb%%[-~+]*}" != "$project" ]; then
    log "debian/changelog says $deb, CMakeLists.txt $project: add a changelog entry (dch -v $project)"
    exit 1
fi

# The revision --version reports, from the real tree (the copy has no .git).
rev=unknown
if git -C "$top" rev-parse --git-dir >/dev/null 2>&1; then
    rev=$(git -C "$top" rev-parse --short=12 HEAD)
    if [ -n "$(git -C "$top" status --porcelain --untracked-files=no)" ]; then
        rev="$rev-dirty"
    fi
fi

mkdir -p "$out"
out=$(cd "$out" && pwd)
src="$out/src/agentlab-$project"
rm -rf "$out/src"
mkdir -p "$src"
if [ "$rev" != unknown ]; then
    (cd "$top" && git ls-files -z --cached | tar --null --no-recursion -T - -cf -) \
        | tar -xf - -C "$src"
else
    (cd "$top" && tar --exclude=./build --exclude='./build-*' --exclude=./obj-* -cf - .) \
        | tar -xf - -C "$src"
fi
rm -f "$out"/agentlab_*.deb "$out"/agentlab-dbgsym_*.deb "$out"/agentlab_*.changes \
    "$out"/agentlab_*.buildinfo

log "building agentlab $deb (git $rev) in $src"
start=$(date +%s)
(cd "$src" && AL_GIT_REVISION="$rev" dpkg-buildpackage -b -uc -us -j"$(nproc)") \
    >"$out/build.log" 2>&1 || {
    tail -n 40 "$out/build.log" >&2
    log "dpkg-buildpackage failed; the whole log is $out/build.log"
    exit 1
}
# dpkg-buildpackage writes next to the source dir
mv "$out/src"/agentlab_* "$out/src"/agentlab-dbgsym_* "$out/" 2>/dev/null || true
pkg="$out/agentlab_${deb}_amd64.deb"
[ -f "$pkg" ] || { log "no $pkg after the build"; exit 1; }
log "built $(basename "$pkg") ($(du -k "$pkg" | cut -f1) KiB) in $(($(date +%s) - start)) s"

# lintian: errors, warnings and infos fail; overrides live in debian/*.lintian-overrides
# with the reason beside each
if ! lintian --fail-on error,warning,info --display-info "$out/agentlab_${deb}_amd64.changes"; then
    log "lintian found problems"
    exit 1
fi
rm -rf "$out/src"
log "ok: $pkg"
