#!/bin/sh
# Instructions per send+receive pair, C API against the Rust API, counted
# by callgrind the same way for both: the difference between runs of N1
# and N2 iterations, divided by N2 - N1 (start-up and tear-down cancel).
# Then wall-clock ns per pair over BIG iterations, interleaved, REPS times.
#
#   capi/bench/run.sh            (from the workspace root; builds release)
#   N1=20000 N2=40000 BIG=5000000 REPS=5 capi/bench/run.sh
set -eu
N1=${N1:-20000}
N2=${N2:-40000}
BIG=${BIG:-2000000}
REPS=${REPS:-5}
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
cargo build --release -q -p shmq-capi
cargo build --release -q -p shmq --example pairloop
lib=${CARGO_TARGET_DIR:-$root/target}/release
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
gcc -O2 -std=c11 -D_GNU_SOURCE -I capi/include -o "$out/pairloop_c" capi/bench/pairloop.c \
    -L"$lib" -Wl,-rpath,"$lib" -lshmq
mkdir -m 700 "$out/q"
export SHMQ_DIR="$out/q"

count() { # program n -> instructions (callgrind Ir total)
    valgrind --tool=callgrind --callgrind-out-file="$out/cg.out" "$1" "$2" >/dev/null 2>&1
    callgrind_annotate "$out/cg.out" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1; exit}'
}
per_pair() { # program
    a=$(count "$1" "$N1")
    b=$(count "$1" "$N2")
    echo $(( (b - a) / (N2 - N1) ))
}
c=$(per_pair "$out/pairloop_c")
r=$(per_pair "$lib/examples/pairloop")
echo "instructions per pair: C $c, Rust $r, ratio $(awk "BEGIN{printf \"%.2f\", $c/$r}")"

ns() { # program -> ns per pair over BIG
    s=$(date +%s%N)
    "$1" "$BIG" >/dev/null
    e=$(date +%s%N)
    echo $(( (e - s) / BIG ))
}
cs=""; rs=""
i=0
while [ $i -lt "$REPS" ]; do
    cs="$cs $(ns "$out/pairloop_c")"
    rs="$rs $(ns "$lib/examples/pairloop")"
    i=$((i + 1))
done
med() { echo "$@" | tr ' ' '\n' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "ns per pair (median of $REPS, $BIG pairs): C $(med $cs) [$cs ], Rust $(med $rs) [$rs ]"
