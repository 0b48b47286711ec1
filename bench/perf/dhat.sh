#!/bin/bash
# Heap profile of one proxy under DHAT over a fixed load. Usage: dhat.sh LABEL BIN WHICH
OUT=${OUT:-/tmp/weft-perf}; mkdir -p $OUT
LABEL=$1; B=$2; WHICH=$3
D=$OUT/dhat-$LABEL-$WHICH; rm -rf $D; mkdir -p $D
VG="valgrind --tool=dhat --dhat-out-file=$D/dhat.out"
if [ $WHICH = web ]; then $(dirname "$0")/mesh.sh $D $B "$VG" "" >$D/mesh.out 2>&1; else $(dirname "$0")/mesh.sh $D $B "" "$VG" >$D/mesh.out 2>&1; fi || { cat $D/mesh.out; exit 1; }
. $D/env
if [ $WHICH = web ]; then PID=$WEB_PID; else PID=$API_PID; fi
$B/weft-bench load --target http://$WEB_OUT/ --host api.default:$P --rate 100 --duration 10s --warmup 0s $LOADARGS > $D/load.out 2>&1
kill -INT $PID; sleep 3
for p in $PIDS; do pkill -P $p 2>/dev/null; kill $p 2>/dev/null; done
sleep 1; ls -la $D/dhat.out
