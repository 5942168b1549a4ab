#!/usr/bin/env bash
# Start one hospital's SuperNode: TLS to the SuperLink, this hospital's private key, its local data.
#
#   scripts/deploy/start_supernode.sh --superlink HOST:PORT --ca CA.pem --key PRIVATE_KEY \
#       --node-config 'hospital-id=0 task="breastmnist" data-path="/data/breastmnist.npz"' [--port PORT]
#
#   --superlink HOST:PORT  the SuperLink's address as written in its certificate (keys.py superlink --host)
#   --ca FILE              the federation's CA certificate (ca.pem): verifies the SuperLink
#   --key FILE             this hospital's private key (keys.py hospital NAME); its .pub must be registered
#   --node-config STR      this site's data, see README "Deployment" (hospital-id, task, data-path)
#   --port PORT            local port of the SuperNode's own ClientApp API on 127.0.0.1; default 9094
#                          (give each SuperNode on one machine its own)
#   --max-wait-time S      give up after S seconds without reaching the SuperLink; default 600
#   --threads N            CPU threads of this hospital's training (OMP_NUM_THREADS); default: all cores.
#                          Where several SuperNodes share a machine (a rehearsal), give each 1: busy
#                          torch threads competing for cores made one training 20x slower here.
#   --skip-check           start even if this site's data fails the check below
#   --fresh-clientapp      run each message in a fresh `flwr-clientapp` process (Flower's own
#                          `--isolation subprocess`), which imports torch/PEFT/transformers every time
#   --pinned-apps FILE     run only the app bundles whose hashes this site pinned in FILE
#                          (scripts/deploy/pin_app.py; docs/deployment.md "Pinning app releases");
#                          any other is refused before it runs, logged, and reported to the coordinator
#   --clientapp-user USER  run the app code (the warm SuperExec and the ClientApps it forks) as USER, an
#                          unprivileged account that cannot read --key (needs root; docs/deployment.md
#                          "Keeping the node key from the app"); refused if USER can read the key or
#                          write the pin file. Without it the app runs as this user and can read the key.
#   --clientapp-home DIR   USER's writable home (installed app bundles, the DP ledger); default USER's home
#
# First it checks the site's data as the ClientApp will read it (scripts/deploy/check_site.py) and
# does not start when that fails, printing why. Nothing listens for the outside world: the
# SuperNode dials out to the SuperLink over HTTPS. Each message runs in a process of its own,
# forked by scripts/deploy/warm_superexec.py from one that imported the hospital's libraries once
# (`flower-supernode --isolation process`; docs/scale.md "Deployment rounds").
set -euo pipefail
# Flower from the checkout's .venv (scripts/install.sh) when there is one, else from PATH.
venv_bin="$(cd "$(dirname "$0")/../.." && pwd)/.venv/bin"
[[ -x "$venv_bin/flower-superlink" ]] && PATH="$venv_bin:$PATH"
superlink="" ca="" key="" node_config="" port=9094 max_wait=600 threads="" check=1 isolation=process pins="" app_user="" app_home=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --superlink) superlink="$2"; shift 2 ;;
    --ca) ca="$2"; shift 2 ;;
    --key) key="$2"; shift 2 ;;
    --node-config) node_config="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    --max-wait-time) max_wait="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --skip-check) check=0; shift ;;
    --fresh-clientapp) isolation=subprocess; shift ;;
    --pinned-apps) pins="$2"; shift 2 ;;
    --clientapp-user) app_user="$2"; shift 2 ;;
    --clientapp-home) app_home="$2"; shift 2 ;;
    -h|--help) sed -n '2,33p' "$0"; exit 0 ;;
    *) echo "start_supernode.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
for name in superlink ca key node_config; do
  [[ -n "${!name}" ]] || { echo "start_supernode.sh: --${name//_/-} is required (see --help)" >&2; exit 2; }
done
for file in "$ca" "$key"; do
  [[ -f "$file" ]] || { echo "start_supernode.sh: $file not found (keys.py makes it; see README, Deployment)" >&2; exit 2; }
done
fail() { echo "start_supernode.sh: $*" >&2; exit 2; }
if [[ -n "$pins" ]]; then
  [[ $isolation == process ]] || fail "--pinned-apps needs the warm SuperExec (it checks each bundle); drop --fresh-clientapp"
fi
as_app=()  # the prefix that runs a command as the ClientApp's user
if [[ -n "$app_user" ]]; then
  [[ $isolation == process ]] || fail "--clientapp-user needs the warm SuperExec; drop --fresh-clientapp"
  [[ $(id -u) == 0 ]] || fail "--clientapp-user needs root (to start the app code as $app_user); run this as root, or drop the option"
  id -u "$app_user" >/dev/null 2>&1 || fail "no user $app_user; create one: useradd --system --create-home $app_user"
  [[ $(id -u "$app_user") != 0 ]] || fail "--clientapp-user $app_user is root; give an unprivileged account"
  app_home="${app_home:-$(getent passwd "$app_user" | cut -d: -f6)}"
  # No capabilities, none to gain (--no-new-privs: no setuid program gives them back).
  as_app=(env HOME="$app_home" FLWR_HOME="$app_home/.flwr" setpriv --reuid="$app_user" --regid="$(id -g "$app_user")"
          --init-groups --inh-caps=-all --bounding-set=-all --no-new-privs)
  ! "${as_app[@]}" test -r "$key" \
    || fail "$key is readable by $app_user, so the app could read this node's private key: chown root and chmod 600 it"
  "${as_app[@]}" test -w "$app_home" \
    || fail "$app_home is not writable by $app_user (bundles and the DP ledger go there); pass --clientapp-home DIR owned by $app_user"
  [[ -z "$pins" ]] || ! "${as_app[@]}" test -w "$pins" \
    || fail "$pins is writable by $app_user, so the app could pin itself: chown root and chmod 644 it"
else
  echo "start_supernode.sh: warning: the app code runs as $(id -un) and can read the node key $key;" \
    "run as root with --clientapp-user (docs/deployment.md, Keeping the node key from the app)" >&2
fi
[[ -z "$threads" ]] || export OMP_NUM_THREADS="$threads" MKL_NUM_THREADS="$threads"
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 FLWR_DISABLE_UPDATE_CHECK=1
# How often the SuperExec asks the SuperNode for a task (Flower's default 1 s adds up to 1 s per message).
export FLWR_SUPEREXEC_TASK_POLL_INTERVAL="${FLWR_SUPEREXEC_TASK_POLL_INTERVAL:-0.2}"
python="python3"; [[ -x "$venv_bin/python" ]] && python="$venv_bin/python"
if [[ -n "$pins" ]]; then
  "$python" "$(dirname "$0")/pin_app.py" --check "$pins" || { echo "start_supernode.sh: fix the pin file $pins" >&2; exit 2; }
fi
if [[ $check == 1 ]]; then
  "${as_app[@]}" "$python" "$(dirname "$0")/check_site.py" --node-config "$node_config" \
    || { echo "start_supernode.sh: this site's data failed the check above; fix it, or pass --skip-check" >&2; exit 1; }
fi
# flower-supernode in the background so SIGINT/SIGTERM reach it at once, its output kept to explain a refusal.
output="$(mktemp)"; trap 'rm -f "$output"' EXIT
flower-supernode --superlink "$superlink" --root-certificates "$ca" --auth-supernode-private-key "$key" \
  --node-config "$node_config" --isolation "$isolation" --host 127.0.0.1 --port "$port" --max-wait-time "$max_wait" \
  > >(tee "$output") 2>&1 &
supernode=$!
superexec=""
if [[ $isolation == process ]]; then
  # It polls the SuperNode's Runtime API on loopback (no TLS, as in subprocess mode) and stops with the SuperNode.
  # As --clientapp-user when given: that user's processes cannot read the node key.
  "${as_app[@]}" "$python" "$(dirname "$0")/warm_superexec.py" --insecure --runtime-api-address "127.0.0.1:$port" \
    --parent-pid "$supernode" ${pins:+--pinned-apps "$pins"} 2>&1 &
  superexec=$!
fi
trap 'kill -TERM "$supernode" $superexec 2>/dev/null' TERM INT
code=0; wait "$supernode" || code=$?
while kill -0 "$supernode" 2>/dev/null; do code=0; wait "$supernode" || code=$?; done
if [[ -n $superexec ]]; then
  while kill -0 "$superexec" 2>/dev/null; do wait "$superexec" || true; done  # it exits when the SuperNode has
fi
if [[ $code != 0 ]] && grep -q "Failed to activate SuperNode" "$output"; then
  # Flower says the same for both causes; the coordinator's `flwr supernode list` tells which.
  echo "start_supernode.sh: the SuperLink refused to activate this SuperNode: either its public key ${key}.pub is" \
    "not registered (the coordinator runs: flwr supernode register ${key##*/}.pub <connection>), or a SuperNode" \
    "with this key is already online (another start of this hospital: stop it, or after it died wait about a" \
    "minute for its heartbeat to lapse). The coordinator's \`flwr supernode list <connection>\` shows which." >&2
fi
exit "$code"
