#!/bin/bash
# Runs Open POSIX Test Suite programs for run.sh: test names (such as
# mq_open/7-1) one per line on stdin, one "NAME EXIT-STATUS" line each on
# stdout; lines starting with "#" are notes.
# usage: openposix_inner.sh BINDIR LOGDIR MSG_MAX [PRELOAD]
# MSG_MAX, if not empty, is written to /proc/sys/fs/mqueue/msg_max first
# (run.sh calls this in a new user and IPC namespace, where that is allowed).
bin=$1 logs=$2 msgmax=$3 preload=${4:-}
if [ -n "$msgmax" ] && [ "$(cat /proc/sys/fs/mqueue/msg_max)" -lt "$msgmax" ]; then
    echo "$msgmax" >/proc/sys/fs/mqueue/msg_max 2>/dev/null ||
        echo "# could not raise msg_max to $msgmax"
fi
echo "# msg_max=$(cat /proc/sys/fs/mqueue/msg_max) in the test namespace"
cd "$bin" || exit 1
while read -r t; do
    [ -n "$t" ] || continue
    e=$bin/${t//\//_}
    if [ ! -x "$e" ]; then
        echo "$t build-failed"
        continue
    fi
    if [ -n "$preload" ]; then
        LD_PRELOAD=$preload timeout 120 "$e" >"$logs/${t//\//_}.log" 2>&1 </dev/null
    else
        timeout 120 "$e" >"$logs/${t//\//_}.log" 2>&1 </dev/null
    fi
    echo "$t $?"
done
