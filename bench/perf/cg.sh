#!/bin/bash
# Instructions per request of one proxy (web|api) under callgrind.
OUT=${OUT:-/tmp/weft-perf}; mkdir -p $OUT
# Usage: cg.sh LABEL BIN WHICH [RATE] [SECS]; LOADARGS (say --new-connection) go to the load.
LABEL=$1; B=$2; WHICH=$3; RATE=${4:-100}; SECS=${5:-10}
D=$OUT/run-$LABEL-$WHICH; rm -rf $D; mkdir -p $D
VG="valgrind --tool=callgrind --callgrind-out-file=$D/cg.out --dump-instr=no --dump-line=yes"
if [ $WHICH = web ]; then $(dirname "$0")/mesh.sh $D $B "$VG" "" >$D/mesh.out 2>&1; else $(dirname "$0")/mesh.sh $D $B "" "$VG" >$D/mesh.out 2>&1; fi || { cat $D/mesh.out; exit 1; }
. $D/env
if [ $WHICH = web ]; then PID=$WEB_PID; ADM=$WEB_ADM; else PID=$API_PID; ADM=$API_ADM; fi
cleanup() { for p in $PIDS; do pkill -P $p 2>/dev/null; kill $p 2>/dev/null; done; }
trap cleanup EXIT
count() { curl -s http://$ADM/metrics | awk '/^weft_proxy_requests_total/ {s+=$NF} END {printf "%d", s}'; }
$B/weft-bench load --target http://$WEB_OUT/ --host api.default:$P --rate $RATE --duration 3s --warmup 1s $LOADARGS >/dev/null 2>&1
sleep 1
c0=$(count)
callgrind_control -z $PID >/dev/null
$B/weft-bench load --target http://$WEB_OUT/ --host api.default:$P --rate $RATE --duration ${SECS}s --warmup 0s $LOADARGS > $D/load.out 2>&1
callgrind_control -d $PID >/dev/null
sleep 1
c1=$(count)
n=$((c1-c0))
f=$(ls -t $D/cg.out.* | head -1)
ir=$(grep -m1 '^summary:\|^totals:' $f | awk '{print $2}')
echo "$LABEL $WHICH requests=$n Ir=$ir Ir/req=$((ir / n))" | tee -a $OUT/results.txt
callgrind_annotate --inclusive=yes $f 2>/dev/null | head -60 > $D/incl.txt
callgrind_annotate $f 2>/dev/null | head -60 > $D/excl.txt
cp $f $OUT/cg-$LABEL-$WHICH.out
