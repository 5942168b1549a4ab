#!/usr/bin/env bash
# Tell the flwr CLI (at the coordinating center) how to reach the deployed SuperLink over TLS.
#
#   scripts/deploy/add_connection.sh NAME HOST:PORT CA.pem
#
# Appends a [superlink.NAME] table to $FLWR_HOME/config.toml (default ~/.flwr/config.toml), which
# `flwr run . NAME` and `flwr supernode register KEY.pub NAME` then use. An existing NAME is refused.
set -euo pipefail
[[ $# -eq 3 ]] || { sed -n '2,7p' "$0" >&2; exit 2; }
name="$1" address="$2" ca="$(realpath "$3")"
[[ -f "$ca" ]] || { echo "add_connection.sh: CA certificate $3 not found" >&2; exit 2; }
config="${FLWR_HOME:-$HOME/.flwr}/config.toml"
mkdir -p "$(dirname "$config")"
if [[ -f "$config" ]] && grep -q "^\[superlink\.$name\]" "$config"; then
  echo "add_connection.sh: $config already has [superlink.$name]; edit it or choose another name" >&2; exit 2
fi
printf '\n[superlink.%s]\naddress = "%s"\nroot-certificates = "%s"\n' "$name" "$address" "$ca" >> "$config"
echo "$config: [superlink.$name] -> $address (CA $ca)"
