#!/bin/sh
# make-v1-fixture.sh builds the control plane as of commit 5c090f6 (schema
# version 1, the last one before the audit hash chain), runs it in plain mode
# on a temporary database, fills it through the HTTP API, stops it (the final
# checkpoint leaves one file) and writes beside this script:
#
#   v1.db         the database (schema version 1), for TestMigrateV1Fixture
#   v1-keys.txt   the API keys it minted, "name role token" per line
#   v1-api/*.json what the old server answered for machines, releases,
#                 rollouts and the audit log, compared with the new server's
#                 answers field by field (new fields are allowed)
#
# Run it from anywhere inside the repository; it needs git, go, curl and sed.
# The fixture is committed: rerun this only to rebuild it on purpose.
set -eu

COMMIT=5c090f6
here=$(cd "$(dirname "$0")" && pwd)
repo=$(git -C "$here" rev-parse --show-toplevel)
tmp=$(mktemp -d)
pid=
cleanup() {
	if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; fi
	rm -rf "$tmp"
}
trap cleanup EXIT

mkdir "$tmp/src"
git -C "$repo" archive "$COMMIT" | tar -x -C "$tmp/src"
(cd "$tmp/src" && CGO_ENABLED=0 go build -o "$tmp/cp" .)

"$tmp/cp" --db-path "$tmp/state.db" --listen 127.0.0.1:0 --executor-interval 100ms 2>"$tmp/log" &
pid=$!
for _ in $(seq 100); do
	addr=$(sed -n 's/.*msg="Control plane listening" addr=\([^ ]*\).*/\1/p' "$tmp/log")
	[ -n "$addr" ] && break
	sleep 0.1
done
[ -n "$addr" ] || { cat "$tmp/log"; exit 1; }
base="http://$addr/api/v1"

# call METHOD PATH KEY [BODY]: prints the response body; fails on a non-2xx.
call() {
	if [ -n "${4:-}" ]; then
		curl -sS --fail-with-body -X "$1" -H "Authorization: Bearer $3" -H 'Content-Type: application/json' -d "$4" "$base$2"
	else
		curl -sS --fail-with-body -X "$1" -H "Authorization: Bearer $3" "$base$2"
	fi
}
field() { sed -n "s/.*\"$1\":\"\([^\"]*\)\".*/\1/p"; }

admin=$(call POST /keys/bootstrap "" '{"name":"fixture-admin"}' | field key)
deploy=$(call POST /keys "$admin" '{"name":"fixture-deploy","role":"deploy"}' | field key)
reader=$(call POST /keys "$admin" '{"name":"fixture-reader","role":"readonly"}' | field key)
revoked=$(call POST /keys "$admin" '{"name":"fixture-revoked","role":"admin"}')
revoked_id=$(echo "$revoked" | sed -n 's/.*"id":\([0-9]*\).*/\1/p')
revoked=$(echo "$revoked" | field key)
call DELETE "/keys/$revoked_id" "$admin" >/dev/null

sp() { printf '/nix/store/%s-nixos-system-%s' "$(printf "%032d" 0 | tr 0 "$1")" "$2"; }
report() { # report MACHINE GENERATION SUCCESS MESSAGE [HEALTH]
	body="{\"machine_id\":\"$1\",\"current_generation\":\"$2\",\"success\":$3,\"message\":\"$4\",\"timestamp\":\"2026-04-11T09:30:00.52Z\",\"agent_version\":\"0.1.0\",\"uptime_seconds\":100${5:+,\"health\":$5}}"
	call POST "/machines/$1/report" "" "$body" >/dev/null
}
passed='{"results":[{"status":"pass","check_name":"sshd.service","duration_ms":3}],"all_passed":true,"timestamp":"2026-04-11T09:30:00.51Z"}'
failed='{"results":[{"status":"fail","check_name":"nginx.service","duration_ms":5,"message":"unit is failed"}],"all_passed":false,"timestamp":"2026-04-11T09:30:00.51Z"}'

# Machines: auto-registered by their first report, one pre-registered with
# tags, reports with and without health, a failure, a lifecycle change.
call POST /machines/web-01/register "$admin" '{"lifecycle":"active","tags":["web","eu"]}' >/dev/null
for m in web-01 web-02 web-03 db-01; do
	report "$m" "$(sp a "$m")" true "switch ok"
done
report web-02 "$(sp a web-02)" true "health-check" "$passed"
report web-03 "$(sp a web-03)" false "health-check" "$failed"
report db-01 "$(sp a db-01)" false "switch failed: activation script exited 1"
call PUT /machines/web-02/tags "$admin" '{"tags":["web","us"]}' >/dev/null
call PATCH /machines/db-01/lifecycle "$admin" '{"lifecycle":"maintenance"}' >/dev/null

# A release, a rollout that completes, and one paused by the operator.
rel=$(call POST /releases "$deploy" "{\"flake_ref\":\"github:example/fleet\",\"flake_rev\":\"0123456789abcdef\",\"entries\":[
	{\"hostname\":\"web-01\",\"store_path\":\"$(sp b web-01)\",\"platform\":\"x86_64-linux\",\"tags\":[\"web\",\"eu\"]},
	{\"hostname\":\"web-02\",\"store_path\":\"$(sp b web-02)\",\"platform\":\"x86_64-linux\",\"tags\":[\"web\",\"us\"]},
	{\"hostname\":\"web-03\",\"store_path\":\"$(sp b web-03)\",\"platform\":\"x86_64-linux\"}]}" | field id)
ro1=$(call POST /rollouts "$deploy" "{\"release_id\":\"$rel\",\"strategy\":\"all_at_once\",\"target\":{\"hosts\":[\"web-01\"]}}" | field rollout_id)
for _ in $(seq 100); do
	report web-01 "$(sp b web-01)" true "health-check" "$passed"
	call GET "/rollouts/$ro1" "$reader" | grep -q '"status":"completed"' && break
	sleep 0.2
done
call GET "/rollouts/$ro1" "$reader" | grep -q '"status":"completed"' || { echo "rollout $ro1 did not complete"; exit 1; }
ro2=$(call POST /rollouts "$deploy" "{\"release_id\":\"$rel\",\"strategy\":\"canary\",\"target\":{\"hosts\":[\"web-02\",\"web-03\"]}}" | field rollout_id)
call POST "/rollouts/$ro2/pause" "$deploy" >/dev/null

out="$here/v1-api"
mkdir -p "$out"
call GET /machines "$reader" >"$out/machines.json"
call GET /releases "$reader" >"$out/releases.json"
call GET "/releases/$rel" "$reader" >"$out/release.json"
call GET "/rollouts/$ro1" "$reader" >"$out/rollout-completed.json"
call GET "/rollouts/$ro2" "$reader" >"$out/rollout-paused.json"
call GET "/audit?limit=1000" "$reader" >"$out/audit.json"

kill -TERM "$pid"
wait "$pid" || true
pid=
cp "$tmp/state.db" "$here/v1.db"
cat >"$here/v1-keys.txt" <<KEYS
# API keys minted by make-v1-fixture.sh into v1.db (test fixture only)
fixture-admin admin $admin
fixture-deploy deploy $deploy
fixture-reader readonly $reader
fixture-revoked revoked $revoked
KEYS
echo "wrote $here/v1.db ($(wc -c <"$here/v1.db") bytes), v1-keys.txt and v1-api/"
