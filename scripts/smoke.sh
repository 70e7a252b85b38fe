#!/usr/bin/env bash
# Starts `microshop up` on the default ports with a fresh data directory,
# checks with grpcurl (no .proto at hand: reflection) that every port lists
# its services and answers health SERVING, places one order through the
# README's example, reads the counters on /metrics, then stops the mesh with
# SIGTERM and expects a clean exit.
set -euo pipefail
bin=${1:-./target/debug/microshop}
grpcurl=${GRPCURL:-grpcurl}
data=$(mktemp -d)
log="$data/up.log"
pid=""
cleanup() { [ -z "$pid" ] || kill "$pid" 2>/dev/null || true; rm -rf "$data"; }
trap cleanup EXIT

fail() { echo "smoke: $*" >&2; cat "$log" >&2; exit 1; }
# wait_exit PID SECS: waits up to SECS for PID to exit and returns its exit
# status; one still running then is SIGKILLed, reaped, and 124 returned.
wait_exit() {
  local pid=$1 secs=$2
  for _ in $(seq 1 $((secs * 10))); do
    if ! kill -0 "$pid" 2>/dev/null; then
      wait "$pid"
      return
    fi
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  return 124
}
# Output is captured before grep reads it: with pipefail, `grpcurl | grep -q`
# fails whenever grep exits early and grpcurl is killed by SIGPIPE.
has() { grep -q -- "$2" <<<"$1"; }

# busy_ports: the sockets (but TIME_WAIT, which a listener may share) on
# the mesh's default ports; wait_ports: waits up to 60 s for none, then
# says who holds them.
busy_ports() {
  command -v ss >/dev/null || return 0
  ss -Htanp 2>/dev/null | awk '$1 != "TIME-WAIT" && $4 ~ /:(5005[1-4]|9464)$/'
}
wait_ports() {
  for _ in $(seq 1 120); do
    [ -z "$(busy_ports)" ] && return
    sleep 0.5
  done
  echo "smoke: a default port is still held after 60 s:"
  busy_ports
}

# The default ports lie in Linux's ephemeral range, so an outgoing
# connection of anything on the machine may hold one, for tens of seconds
# at worst: wait for the ports to be free, wait for the mesh to say it is
# up (no probing while it binds), and start it again if a port was busy.
for attempt in 1 2 3; do
  wait_ports
  "$bin" up --data-dir "$data" >"$log" 2>&1 &
  pid=$!
  for _ in $(seq 1 300); do
    if grep -q 'mesh is up' "$log" || ! kill -0 "$pid" 2>/dev/null; then
      break
    fi
    sleep 0.1
  done
  grep -q 'mesh is up' "$log" && break
  if grep -q 'Address already in use' "$log" && [ "$attempt" -lt 3 ]; then
    echo "smoke: a default port was busy; starting microshop up again"
    wait_exit "$pid" 30 || true
    sleep 2
    continue
  fi
  fail "microshop up did not come up"
done

for port in 50051 50052 50053 50054; do
  ok=""
  for _ in $(seq 1 100); do
    health=$("$grpcurl" -plaintext -max-time 1 "127.0.0.1:$port" grpc.health.v1.Health/Check 2>/dev/null || true)
    if has "$health" SERVING; then
      ok=1; break
    fi
    sleep 0.1
  done
  [ -n "$ok" ] || fail "port $port never answered health SERVING"
  listing=$("$grpcurl" -plaintext "127.0.0.1:$port" list) || fail "port $port: list failed"
  has "$listing" '^grpc.health.v1.Health$' || fail "port $port lists no health service"
  has "$listing" '^grpc.reflection.v1.ServerReflection$' || fail "port $port does not list reflection v1"
done
has "$("$grpcurl" -plaintext 127.0.0.1:50051 list)" microshop.orchestrator.v1.CheckoutService || fail "no CheckoutService on 50051"
has "$("$grpcurl" -plaintext 127.0.0.1:50052 list)" microshop.inventory.v1.InventoryService || fail "no InventoryService on 50052"
has "$("$grpcurl" -plaintext 127.0.0.1:50053 list)" microshop.loyalty.v1.LoyaltyService || fail "no LoyaltyService on 50053"
has "$("$grpcurl" -plaintext 127.0.0.1:50054 list)" microshop.order.v1.OrderService || fail "no OrderService on 50054"
# Each port lists what it answers, no more; health knows each of them.
has "$("$grpcurl" -plaintext 127.0.0.1:50051 list)" microshop.orchestrator.v1.SagaAdminService || fail "no SagaAdminService on 50051"
! has "$("$grpcurl" -plaintext 127.0.0.1:50052 list)" microshop.orchestrator.v1.CheckoutService || fail "50052 lists CheckoutService, which it does not serve"
has "$("$grpcurl" -plaintext -d '{"service":"microshop.orchestrator.v1.SagaAdminService"}' 127.0.0.1:50051 grpc.health.v1.Health/Check)" SERVING || fail "health does not know SagaAdminService"

# The README's walkthrough, as written there.
"$grpcurl" -plaintext -d '{"sku":"TSHIRT","name":"Cotton T-shirt","unitPrice":150000,"stock":10}' \
  127.0.0.1:50052 microshop.inventory.v1.InventoryService/PutProduct >/dev/null
"$grpcurl" -plaintext -d '{"customerId":"alice","points":200}' \
  127.0.0.1:50053 microshop.loyalty.v1.LoyaltyService/GrantPoints >/dev/null
out=$("$grpcurl" -plaintext -d '{"idempotencyKey":"order-1","customerId":"alice","items":[{"sku":"TSHIRT","quantity":2}],"pointsToRedeem":50,"shipping":{"name":"Alice","address":"1 Main St","phone":"0900000000"}}' \
  127.0.0.1:50051 microshop.orchestrator.v1.CheckoutService/PlaceOrder)
has "$out" '"state": "SAGA_STATE_COMPLETED"' || fail "PlaceOrder did not complete: $out"
has "$out" '"pointsDiscountPrice": "50000"' || fail "order lost pointsDiscountPrice: $out"
err=$("$grpcurl" -plaintext -d '{"idempotencyKey":"order-2","customerId":"bob","items":[{"sku":"TSHIRT","quantity":99}]}' \
  127.0.0.1:50051 microshop.orchestrator.v1.CheckoutService/PlaceOrder 2>&1 || true)
has "$err" FailedPrecondition || fail "oversell not refused: $err"
# Reflection serves google.rpc's types too, so grpcurl decodes the details.
has "$err" '"reason":"OUT_OF_STOCK"' || fail "error details not decoded by grpcurl: $err"

# Prometheus metrics of the whole mesh on up's default endpoint: one saga
# completed, one compensated, one stock-out.
metrics=$(python3 -c 'import urllib.request; print(urllib.request.urlopen("http://127.0.0.1:9464/metrics", timeout=5).read().decode())') \
  || fail "no /metrics on 127.0.0.1:9464"
has "$metrics" '^microshop_sagas_completed_total{saga_type="place-order"} 1$' || fail "completed saga not counted: $metrics"
has "$metrics" '^microshop_sagas_compensated_total{saga_type="place-order"} 1$' || fail "compensated saga not counted: $metrics"
has "$metrics" '^microshop_stock_out_rejections_total 1$' || fail "stock-out not counted: $metrics"

kill -TERM "$pid"
status=0
wait_exit "$pid" 30 || status=$?
[ "$status" -ne 124 ] || fail "microshop up did not exit within 30 s of SIGTERM (killed)"
[ "$status" -eq 0 ] || fail "microshop up did not exit cleanly on SIGTERM (status $status)"
trap - EXIT
rm -rf "$data"
echo "smoke: ok"
