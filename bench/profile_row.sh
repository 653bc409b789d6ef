#!/usr/bin/env bash
# bench/profile_row.sh PORT "<redis-benchmark args>" OUT
# Profile one issue-7 row: crossdock async+pool (one worker) pinned to CPU 0 under redis-benchmark pinned to
# CPU 1, sampled by py-spy (the `bench` extra) for 6 s; prints the flat profile (self and inclusive shares).
# Example: bench/profile_row.sh 7981 "-t ping_mbulk -c 50 -n 2000000 -P 16" /tmp/p16.txt
set -euo pipefail
PORT=$1; ARGS=$2; OUT=$3
cd "$(dirname "$0")/.."
taskset -c 0 .venv/bin/python -m server serve --port $PORT --log-level warning --workers 1 > /tmp/spy_srv.log 2>&1 &
SRV=$!
sleep 2.5
pid=$(pgrep -f "server serve --port $PORT" | head -1)
.venv/bin/py-spy record -p $pid -d 6 -r 250 -f raw -o $OUT --nonblocking >/dev/null 2>&1 &
SPY=$!
sleep 0.3
taskset -c 1 redis-benchmark -p $PORT $ARGS -q 2>&1 | tr '\r' '\n' | grep "per second" | tail -2
wait $SPY
kill $SRV; wait $SRV 2>/dev/null
python3 - "$OUT" <<'PY'
import collections, sys
tot=0; self_=collections.Counter(); incl=collections.Counter()
for line in open(sys.argv[1]):
    stack,_,n=line.rstrip().rpartition(' ')
    n=int(n); tot+=n
    frames=stack.split(';')
    self_[frames[-1].split(' (')[0]]+=n
    seen=set()
    for f in frames:
        fn=f.split(' (')[0]
        if fn not in seen: incl[fn]+=n; seen.add(fn)
print('samples',tot)
for f,n in self_.most_common(10): print(f"self {n/tot:6.1%} {f}")
for f,n in incl.most_common(24)[7:]: print(f"incl {n/tot:6.1%} {f}")
PY
