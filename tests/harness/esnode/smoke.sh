#!/usr/bin/env bash
# End-to-end check of the es-node harness: kibana feature snapshot + restore against the real node.
# Prints every exchange, then checks the outcome; exits non-zero on a failed check.
# Usage: tests/harness/esnode/smoke.sh
# Uses its own node (KR_TEST_STATE=/tmp/kr-smoke, ES_PORT=9251 unless set; ES_VERSION picks the version), stopped
# at the end unless KEEP=1.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export KR_TEST_STATE="${KR_TEST_STATE:-/tmp/kr-smoke}" ES_PORT="${ES_PORT:-9251}"
"$here/../es-node" down
[[ "${KEEP:-}" == 1 ]] || trap '"$here/../es-node" down; rmdir "$KR_TEST_STATE" 2>/dev/null || true' EXIT
eval "$("$here/../es-node" up)"
U="$ES_URL"
K=(-H 'X-elastic-product-origin: kibana')
J=(-H 'Content-Type: application/json')
req() { # METHOD PATH [BODY] [extra curl args...]
  local m="$1" p="$2" b="${3:-}"; shift 3 || shift $#
  echo ">>> $m $p ${b}"
  if [[ -n "$b" ]]; then curl -s -i -X "$m" "$U$p" "${J[@]}" "$@" -d "$b"; else curl -s -i -X "$m" "$U$p" "$@"; fi \
    | tr -d '\r' | grep -viE '^(content-length|x-elastic-product):'
  echo; echo
}
req DELETE /_kr_test/counters ''
req GET /_features ''
req GET '/_nodes/_all/_none?filter_path=nodes.*.version' ''
req PUT /_snapshot/repo "{\"type\":\"fs\",\"settings\":{\"location\":\"$ES_REPO_PATH\"}}"
req PUT /.kibana_8.14.3_001 '{"settings":{"number_of_replicas":0},"aliases":{".kibana":{},".kibana_8.14.3":{}}}' "${K[@]}"
req PUT '/.kibana_8.14.3_001/_create/config:8.14.3?refresh=true' '{"type":"config","v":"old"}' "${K[@]}"
req PUT '/.kibana/_create/config:8.14.3' '{"type":"config","v":"dup"}' "${K[@]}"
req PUT '/.kibana_8.14.3_001/_doc/lock?refresh=true' '{"owner":"a"}' "${K[@]}"
req PUT '/.kibana_8.14.3_001/_doc/lock?if_seq_no=99&if_primary_term=1' '{"owner":"b"}' "${K[@]}"
req GET '/.kibana/_doc/config:8.14.3' '' "${K[@]}"
req GET '/.kibana/_doc/config:8.14.3' ''
req PUT '/_snapshot/repo/s1?wait_for_completion=true' '{"indices":"-*","include_global_state":false,"feature_states":["kibana"]}'
req GET '/_snapshot/repo/_all?sort=start_time&order=desc&ignore_unavailable=true' ''
req PUT '/.kibana_8.14.3_001/_doc/config:8.14.3?refresh=true' '{"type":"config","v":"changed"}' "${K[@]}"
req PUT /.kibana_8.15.0_001 '{"settings":{"number_of_replicas":0}}' "${K[@]}"
req PUT '/other/_doc/1?refresh=true' '{"x":1}'
req POST '/_snapshot/repo/s1/_restore?wait_for_completion=true' '{"indices":"-*","include_global_state":false,"feature_states":["kibana"]}' -H 'User-Agent: kibana-rollback-smoke/0' -H 'X-Opaque-Id: smoke-restore-1'
req GET '/_cluster/health/.kibana*?wait_for_status=yellow&timeout=30s' ''
req GET '/.kibana/_doc/config:8.14.3' '' "${K[@]}"
req GET '/.kibana_8.14.3_001/_doc/lock' '' "${K[@]}"
req GET '/_cat/indices?v&expand_wildcards=all&h=index,health,docs.count' ''
req GET '/_alias/.kibana' '' "${K[@]}"
req GET /other/_doc/1 ''
req GET /_kr_test/counters ''

fail=0
check() { # DESCRIPTION COMMAND...
  if "${@:2}" >/dev/null; then echo "ok   - $1"; else echo "FAIL - $1"; fail=1; fi
}
get() { curl -s "$U$1" "${K[@]}"; }
check "GET _features lists kibana" grep -q '"name":"kibana"' <<<"$(get /_features)"
check "snapshot s1 has feature_states kibana" grep -q '"feature_states":\[{"feature_name":"kibana","indices":\[".kibana_8.14.3_001"\]}\]' <<<"$(get /_snapshot/repo/s1)"
check "doc is back to the snapshot's version" grep -q '"v":"old"' <<<"$(get /.kibana/_doc/config:8.14.3)"
check ".kibana_8.15.0_001 (not in the snapshot) was deleted by the restore" grep -q '"status":404' <<<"$(get /.kibana_8.15.0_001)"
check "index other untouched" grep -q '"found":true' <<<"$(get /other/_doc/1)"
check "node saw exactly one restore" grep -q '^{"restore":1,' <<<"$(get /_kr_test/counters)"
check "restore recorded User-Agent and X-Opaque-Id" grep -q '"user_agent":"kibana-rollback-smoke/0","x_opaque_id":"smoke-restore-1"' <<<"$(get /_kr_test/counters)"
exit $fail
