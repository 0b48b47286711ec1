#!/bin/bash
# RSS of both proxies: idle after start, after 1,000 req/s for 10 s, after max for 10 s.
OUT=${OUT:-/tmp/weft-perf}; mkdir -p $OUT
B=$1; BASE=$2; D=$OUT/mem-$3; rm -rf $D
BASE=$BASE $(dirname "$0")/mesh.sh $D $B > /dev/null 2>&1 || exit 1
. $D/env
st() { for p in $WEB_PID $API_PID; do grep -E "VmHWM|VmRSS|RssAnon|RssFile" /proc/$p/status | awk '{printf "%s %s ",$1,$2}'; echo; done; }
sleep 2; echo "idle:"; st
$B/weft-bench load --target http://$WEB_OUT/ --host api.default:$P --rate 1000 --duration 10s --warmup 1s 2>&1 | tail -1
echo "after 1000/s:"; st
$B/weft-bench load --target http://$WEB_OUT/ --host api.default:$P --max --duration 10s --warmup 1s 2>&1 | tail -1
echo "after max:"; st
for p in $PIDS; do pkill -P $p; kill $p; done 2>/dev/null
