# Helpers for tests that run agentlab against the Proxmox simulator
# (tests/fakes/pve_sim.py). Sourced, not run. Needs: AL_SOURCE_DIR,
# PVE_SCHEMA (defaults to tests/contracts/pve-api-schema.json), python3,
# openssl, curl.

# al_skip: a test that cannot run fails (unless AGENTLAB_ALLOW_SKIP=1, never in CI)
. "$AL_SOURCE_DIR/tests/support/skip.sh"

fail() {
    echo "FAIL: $*" >&2
    exit 1
}

PVE_SCHEMA=${PVE_SCHEMA:-$AL_SOURCE_DIR/tests/contracts/pve-api-schema.json}
# the system interpreter: version-manager shims cost a second per start
if [ -x /usr/bin/python3 ]; then PY=/usr/bin/python3; else PY=python3; fi
PVE_SIM="$AL_SOURCE_DIR/tests/fakes/pve_sim.py"
PVE_TOKEN='root@pam!agentlab=0a1b2c3d-4e5f-6789-abcd-ef0123456789'

# A private state and run dir; the run dir is short for unix socket paths.
pve_test_env() {
    TEST_TMP=$(mktemp -d /tmp/al-pve.XXXXXX)
    chmod 0711 "$TEST_TMP"
    export AGENTLAB_STATE_DIR="$TEST_TMP/state"
    export AGENTLAB_RUN_DIR="$TEST_TMP/run"
    export AGENTLAB_CONFIG="$TEST_TMP/agentlab.conf"
    mkdir -p "$AGENTLAB_STATE_DIR" "$AGENTLAB_RUN_DIR"
    SIM_PID=
    trap pve_test_cleanup EXIT
    [ -r "$PVE_SCHEMA" ] || fail "no Proxmox API schema at $PVE_SCHEMA"
    openssl req -x509 -newkey rsa:2048 -nodes -subj /CN=pve-sim -days 2 \
        -keyout "$TEST_TMP/key.pem" -out "$TEST_TMP/cert.pem" \
        -addext subjectAltName=IP:127.0.0.1 2>/dev/null || fail "openssl req failed"
    PVE_FP=$(openssl x509 -in "$TEST_TMP/cert.pem" -noout -fingerprint -sha256 | cut -d= -f2)
    printf '%s\n' "$PVE_TOKEN" >"$TEST_TMP/token"
    chmod 0600 "$TEST_TMP/token"
}

pve_test_cleanup() {
    pve_sim_stop
    if [ -n "${KEEP_TEST_TMP:-}" ]; then
        echo "kept $TEST_TMP" >&2
    else
        rm -rf "$TEST_TMP"
    fi
}

# pve_sim_start [CONFIG_JSON]: starts the simulator, sets PVE_PORT/PVE_URL.
pve_sim_start() {
    # the test's token; 401s answer after 0.3 s here (Proxmox waits ~3 s)
    "$PY" -c '
import json, sys
c = json.loads(sys.argv[1])
c.setdefault("token", sys.argv[2])
c.setdefault("auth_delay_s", 0.3)
print(json.dumps(c))' "${1:-{\}}" "$PVE_TOKEN" >"$TEST_TMP/sim.json" || fail "bad simulator config"
    rm -f "$TEST_TMP/port"
    "$PY" "$PVE_SIM" --schema "$PVE_SCHEMA" --cert "$TEST_TMP/cert.pem" \
        --key "$TEST_TMP/key.pem" --state-dir "$TEST_TMP/sim" --port-file "$TEST_TMP/port" \
        --config "$TEST_TMP/sim.json" 2>>"$TEST_TMP/sim.log" &
    SIM_PID=$!
    i=0
    while [ ! -s "$TEST_TMP/port" ]; do
        i=$((i + 1))
        [ $i -lt 200 ] || { cat "$TEST_TMP/sim.log"; fail "the simulator did not start"; }
        kill -0 "$SIM_PID" 2>/dev/null || { cat "$TEST_TMP/sim.log"; fail "the simulator died"; }
        sleep 0.05
    done
    PVE_PORT=$(cat "$TEST_TMP/port")
    PVE_URL="https://127.0.0.1:$PVE_PORT"
}

pve_sim_stop() {
    if [ -n "${SIM_PID:-}" ]; then
        kill "$SIM_PID" 2>/dev/null || true
        wait "$SIM_PID" 2>/dev/null || true
        SIM_PID=
    fi
}

pve_ctl() { # pve_ctl PATH [JSON]: POST to the control API
    curl -skf -X POST --data-binary "${2:-{\}}" "$PVE_URL/_sim/$1" >/dev/null ||
        fail "simulator control $1 failed"
}

pve_state() {
    curl -skf "$PVE_URL/_sim/state" || fail "simulator state unreadable"
}

# pve_check PYTHON_EXPR...: evaluates expressions over the state `s`;
# prints the state and fails when one is false.
pve_check() {
    pve_state >"$TEST_TMP/state.json"
    "$PY" -c '
import json, sys
s = json.load(open(sys.argv[1]))
vms = [v for v in s["vms"] if not v["initial"] and not v["foreign"]]
for expr in sys.argv[2:]:
    if not eval(expr):
        print(json.dumps(s, indent=1)[:6000], file=sys.stderr)
        print("FAIL: simulator: " + expr, file=sys.stderr)
        sys.exit(1)' "$TEST_TMP/state.json" "$@" || exit 1
}

# No VM of ours left (foreign ones vanish by themselves), no process, no
# task running, and no request broke the schema or the wire rules.
pve_assert_clean() {
    i=0
    while :; do
        pve_state >"$TEST_TMP/state.json"
        "$PY" -c '
import json, sys
s = json.load(open(sys.argv[1]))
sys.exit(0 if not s["tasks_running"] and not any(v["foreign"] for v in s["vms"]) else 1)' \
            "$TEST_TMP/state.json" && break
        i=$((i + 1))
        [ $i -lt 100 ] || break
        sleep 0.1
    done
    pve_check 'not vms' 's["procs_running"] == 0' 'not s["tasks_running"]' 'not s["violations"]'
}

# pve_conf [EXTRA_BACKEND_LINES] [EXTRA_AGENT_LINES]: a config with one
# Proxmox backend "cluster" and the default pool using it.
pve_conf() {
    cat >"$AGENTLAB_CONFIG" <<CONF
[agent]
log_level = info
${2:-}
[backend "cluster"]
type = proxmox
url = $PVE_URL
token_file = $TEST_TMP/token
fingerprint = $PVE_FP
template = 9000
pool = ci
${1:-}
CONF
}

job_id_from() {
    sed -n 's/.*job \(j[0-9a-f]*\): queued.*/\1/p' "$1" | head -n 1
}
