#!/bin/bash
# layering.sh BUILD_DIR PROBE_DIR TARGET...
#
# Proves that the layers of ARCHITECTURE.md are enforced by the build:
# 1. every layer_probe_*_allowed target compiles, and every other probe (a
#    file in PROBE_DIR that includes a header of a layer it may not use) fails
#    to compile on exactly that header;
# 2. no layer's archive calls a function (or uses a variable) that only a
#    layer it may not use defines: the undefined symbols of libal_L.a are
#    looked up in the other layers' archives and the layers L uses (the
#    .uses files cmake/layers.cmake writes) must hold every one found.
set -u
build=$1 probes=$2
shift 2
fail=0

for target in "$@"; do
    name=${target#layer_probe_}
    src=$probes/$name.c
    out=$(cmake --build "$build" --target "$target" 2>&1)
    rc=$?
    if [[ $name == *_allowed ]]; then
        if ((rc != 0)); then
            echo "FAIL: $name should compile:"; echo "$out" | tail -5; fail=1
        else
            echo "ok: $name compiles"
        fi
        continue
    fi
    header=$(sed -n 's/^#include "\(.*\)"/\1/p' "$src" | head -1)
    if ((rc == 0)); then
        echo "FAIL: $name compiled, but it includes $header from a layer it may not use"; fail=1
    elif ! grep -q "$header: No such file or directory" <<<"$out"; then
        echo "FAIL: $name failed, but not on $header:"; echo "$out" | tail -5; fail=1
    else
        echo "ok: $name fails: $header: No such file or directory"
    fi
done

# 2. symbols
declare -A uses defined_in
layers=()
for f in "$build"/layers/*.uses; do
    l=$(basename "$f" .uses)
    layers+=("$l")
    uses[$l]=$(tr ';' ' ' <"$f")
done
for l in "${layers[@]}"; do
    a=$build/libal_$l.a
    [[ -f $a ]] || { echo "FAIL: $a is missing"; fail=1; continue; }
    while read -r sym; do
        defined_in[$sym]+="$l "
    done < <(nm -g --defined-only "$a" 2>/dev/null | awk 'NF == 3 && $2 ~ /[TDBRC]/ {print $3}')
done
# transitive closure of uses
closure() {
    local seen=" $1 " todo=($1) x u
    while ((${#todo[@]})); do
        x=${todo[0]}; todo=("${todo[@]:1}")
        for u in ${uses[$x]}; do
            [[ $seen == *" $u "* ]] || { seen+="$u "; todo+=("$u"); }
        done
    done
    echo "$seen"
}
checked=0
for l in "${layers[@]}"; do
    allowed=$(closure "$l")
    while read -r sym; do
        where=${defined_in[$sym]:-}
        [[ -z $where ]] && continue # libc or another library
        ok=0
        for w in $where; do [[ $allowed == *" $w "* ]] && ok=1; done
        checked=$((checked + 1))
        if ((ok == 0)); then
            echo "FAIL: layer $l uses $sym, defined in layer(s) ${where% } it may not use"; fail=1
        fi
    done < <(nm -g --undefined-only "$build/libal_$l.a" 2>/dev/null | awk '$1 == "U" {print $2}' | sort -u)
done
echo "symbols: $checked references between layers checked in ${#layers[@]} layers"
exit $fail
