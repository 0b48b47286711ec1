#!/bin/bash
# Start the bench mesh by hand: app, identity, policy, api proxy, web proxy.
# Usage: mesh.sh DIR BIN [WRAP_WEB] [WRAP_API]   (WRAP_* e.g. "valgrind --tool=callgrind ...")
# Writes DIR/env with ports and pids.
set -e
D=$1; B=$2; WRAP_WEB=${3:-}; WRAP_API=${4:-}
mkdir -p $D
BASE=${BASE:-24100}
APP=127.0.0.1:$((BASE+0)); ID=127.0.0.1:$((BASE+1)); IDA=127.0.0.1:$((BASE+2))
POL=127.0.0.1:$((BASE+3)); POLA=127.0.0.1:$((BASE+4))
API_IN=127.0.0.1:$((BASE+5)); API_OUT=127.0.0.1:$((BASE+6)); API_ADM=127.0.0.1:$((BASE+7))
WEB_IN=127.0.0.1:$((BASE+8)); WEB_OUT=127.0.0.1:$((BASE+9)); WEB_ADM=127.0.0.1:$((BASE+10))
export WEFT_LOG=warn
wait200() { for i in $(seq 1 1200); do s=$(curl -s -o /dev/null -w '%{http_code}' -H "Host: $2" http://$1$3 || true); [ "$s" = 200 ] && return 0; sleep 0.1; done; echo "timeout $1$3"; return 1; }
sh -c "$B/weft-bench app --listen $APP --body-size 64 --lifetime 2h 2>$D/app.log; true" & APP_PID=$!
wait200 $APP app /
$B/weft identity --data-dir $D/ca --listen $ID --admin-listen $IDA 2>$D/identity.log & ID_PID=$!
wait200 $IDA localhost /ready
for w in "weft policy" "default api" "default web"; do set -- $w; $B/weft token create --namespace $1 --workload $2 --data-dir $D/ca > $D/$2.token; done
mkdir -p $D/res
P=${APP##*:}
printf 'kind: Service\nmetadata: {name: api, namespace: default}\nspec: {ports: [{port: %s}]}\n---\nkind: Service\nmetadata: {name: web, namespace: default}\nspec: {ports: [{port: 8080}]}\n---\nkind: AuthorizationPolicy\nmetadata: {name: api-from-web, namespace: default}\nspec:\n  target: {service: api, port: %s}\n  allow:\n    - identities: ["spiffe://weft.local/ns/default/sa/web"]\n' $P $P > $D/res/mesh.yaml
WEFT_TOKEN_FILE=$D/policy.token WEFT_IDENTITY_ADDR=$ID $B/weft policy --dir $D/res --listen $POL --admin-listen $POLA 2>$D/policy.log & POL_PID=$!
wait200 $POLA localhost /ready
WEFT_TOKEN_FILE=$D/api.token WEFT_IDENTITY_ADDR=$ID WEFT_POLICY_ADDR=$POL WEFT_PROXY_INBOUND_LISTEN=$API_IN WEFT_PROXY_OUTBOUND_LISTEN=$API_OUT WEFT_PROXY_ADMIN_LISTEN=$API_ADM WEFT_PROXY_APP_PORT=$P \
  $WRAP_API $B/weft-proxy 2>$D/api.log & API_PID=$!
wait200 $API_ADM localhost /ready
WEFT_TOKEN_FILE=$D/web.token WEFT_IDENTITY_ADDR=$ID WEFT_POLICY_ADDR=$POL WEFT_PROXY_INBOUND_LISTEN=$WEB_IN WEFT_PROXY_OUTBOUND_LISTEN=$WEB_OUT WEFT_PROXY_ADMIN_LISTEN=$WEB_ADM WEFT_PROXY_APP_PORT=1 \
  $WRAP_WEB $B/weft-proxy 2>$D/web.log & WEB_PID=$!
wait200 $WEB_ADM localhost /ready
wait200 $WEB_OUT api.default:$P /
cat > $D/env <<E2
APP=$APP
P=$P
WEB_OUT=$WEB_OUT
WEB_ADM=$WEB_ADM
API_ADM=$API_ADM
PIDS="$APP_PID $ID_PID $POL_PID $API_PID $WEB_PID"
API_PID=$API_PID
WEB_PID=$WEB_PID
E2
echo ready
