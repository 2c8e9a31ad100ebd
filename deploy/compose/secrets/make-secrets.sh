#!/bin/sh
# Writes the compose file's secrets into this folder (never committed; see .gitignore here):
# the GPs' and operators' token hashes (the tokens themselves are printed once) and Grafana's
# admin password. The hub's own keys come from `make run` (.hub/secrets at the repository root).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
hub=${HUB_BIN:-$here/../../../.venv/bin/hub}
umask 077
HUB_GATEWAY_TOKENS_FILE="$here/gp-tokens.json" "$hub" gateway token issue "${1:-10009900019}"
HUB_CONSOLE_TOKENS_FILE="$here/operator-tokens.json" "$hub" console token issue "${2:-operator}"
[ -s "$here/grafana-admin-password" ] || head -c 24 /dev/urandom | base64 > "$here/grafana-admin-password"
echo "secrets written to $here"
