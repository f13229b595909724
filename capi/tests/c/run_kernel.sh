#!/usr/bin/env bash
# Build the C tests against the kernel's POSIX message queues and run them.
#
#   capi/tests/c/run_kernel.sh [program ...]     (default: all programs)
#
# Environment:
#   BUILD         output directory (default: capi/tests/c/build/kernel)
#   RUNS          times to run each program (default 1)
#   TIMEOUT       seconds allowed per run (default 120)
#   RUN_FORTIFY   1: run the _FORTIFY_SOURCE=2 build instead (it is always
#                 built, to check that the sources compile with it)
#
# Exits 0 only if everything built and every run ended with status 0, a last
# line "N passed, 0 failed" and no queue of its own left in /dev/mqueue.
# The last line printed is the total, in the same "N passed, N failed" form.
set -u

here=$(cd "$(dirname "$0")" && pwd)
BUILD=${BUILD:-$here/build/kernel}
RUNS=${RUNS:-1}
TIMEOUT=${TIMEOUT:-120}
RUN_FORTIFY=${RUN_FORTIFY:-0}

make -s -C "$here" VARIANT=kernel BUILD="$BUILD" || exit 2
make -s -C "$here" VARIANT=kernel BUILD="$BUILD/fortify" \
    EXTRA_CFLAGS=-D_FORTIFY_SOURCE=2 || exit 2

bindir=$BUILD
[ "$RUN_FORTIFY" = 1 ] && bindir=$BUILD/fortify
if [ $# -gt 0 ]; then
    programs=("$@")
else
    mapfile -t programs < <(make -s -C "$here" VARIANT=kernel BUILD="$BUILD" list)
    programs=("${programs[@]##*/}")
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
total_passed=0 total_failed=0 ok_runs=0 bad_runs=0

for ((run = 1; run <= RUNS; run++)); do
    for name in "${programs[@]}"; do
        prog=$bindir/$name
        problems=()
        if [ ! -x "$prog" ]; then
            echo "run_kernel: no such test program: $prog" >&2
            bad_runs=$((bad_runs + 1))
            continue
        fi
        timeout -k 10 "$TIMEOUT" "$prog" >"$log" 2>&1
        rc=$?
        cat "$log"
        [ $rc -eq 0 ] || problems+=("exit status $rc")
        [ $rc -eq 124 ] && problems+=("timed out after ${TIMEOUT}s")

        last=$(tail -n 1 "$log")
        if [[ $last =~ ^([0-9]+)\ passed,\ ([0-9]+)\ failed$ ]]; then
            total_passed=$((total_passed + BASH_REMATCH[1]))
            total_failed=$((total_failed + BASH_REMATCH[2]))
        else
            problems+=("no summary line")
            total_failed=$((total_failed + 1))
        fi

        # Queues are named /mqtest-<pid>-...; the first line gives the pid.
        pid=$(sed -n '1s/^# .* (pid \([0-9]*\))$/\1/p' "$log")
        if [ -n "$pid" ] && [ -d /dev/mqueue ]; then
            left=$(cd /dev/mqueue && ls -A | grep "^mqtest-$pid-")
            if [ -n "$left" ]; then
                problems+=("left queues behind: $(echo $left)")
                (cd /dev/mqueue && echo "$left" | while read -r q; do rm -f -- "$q"; done)
            fi
        fi

        if [ ${#problems[@]} -eq 0 ]; then
            ok_runs=$((ok_runs + 1))
            echo "PASS $name (run $run)"
        else
            bad_runs=$((bad_runs + 1))
            reasons=$(printf '%s; ' "${problems[@]}")
            echo "FAIL $name (run $run): ${reasons%; }"
        fi
        echo
    done
done

echo "runs: $ok_runs passed, $bad_runs failed"
echo "$total_passed passed, $total_failed failed"
[ $bad_runs -eq 0 ] && [ $total_failed -eq 0 ]
