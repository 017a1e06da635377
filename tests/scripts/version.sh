#!/bin/sh
# `agentlab --version` and `agentlabd --version` name the project version and
# the git revision of the tree they were built from, and the revision script
# says "unknown" outside git.
# usage: version.sh AGENTLAB AGENTLABD VERSION SOURCE_DIR REVISION_SCRIPT
set -eu
cli=$1
daemon=$2
version=$3
src=$4
script=$5
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

want_rev=
if git -C "$src" rev-parse --git-dir >/dev/null 2>&1; then
    want_rev=$(git -C "$src" rev-parse --short=12 HEAD)
fi

for prog in "$cli" "$daemon"; do
    name=$(basename "$prog")
    for opt in --version -V; do
        out=$("$prog" "$opt")
        echo "$out"
        rev=$(printf '%s\n' "$out" | sed -n "s/^$name $version (git \\(.*\\))\$/\\1/p")
        [ -n "$rev" ] || { echo "FAIL: $name $opt: expected \"$name $version (git REV)\""; exit 1; }
        if [ -n "$want_rev" ]; then
            case "$rev" in
            "$want_rev" | "$want_rev-dirty") ;;
            *) echo "FAIL: $name says revision $rev, the tree is at $want_rev"; exit 1 ;;
            esac
        fi
    done
done

# Outside a git checkout (a release tarball): "unknown"; an explicit
# revision (-DAL_GIT_REVISION) wins.
mkdir "$tmp/tree"
cmake -DSRC="$tmp/tree" -DOUT="$tmp/rev.c" -P "$script"
grep -q 'al_git_revision\[\] = "unknown";' "$tmp/rev.c" || { cat "$tmp/rev.c"; exit 1; }
cmake -DSRC="$tmp/tree" -DOUT="$tmp/rev.c" -DREVISION=1a2b3c -P "$script"
grep -q 'al_git_revision\[\] = "1a2b3c";' "$tmp/rev.c" || { cat "$tmp/rev.c"; exit 1; }
if cmake -DSRC="$tmp/tree" -DOUT="$tmp/rev.c" -DREVISION='a"b' -P "$script" 2>/dev/null; then
    echo "FAIL: a revision with a quote was accepted"
    exit 1
fi
echo ok
