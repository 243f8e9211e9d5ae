#!/bin/sh
# Wait (bounded) for a model server to answer before the gateway starts, so the first
# message is not the one that discovers the backend is still loading.
# Usage: ensure-model-ready.sh [URL] [TRIES]   (default: Ollama on 127.0.0.1:11434, 30 tries)
# With the embedded model there is nothing to wait for: the gateway loads it itself.
url="${1:-${HEARTHBOT_MODEL_URL:-}}"
tries="${2:-30}"
[ -z "$url" ] && exit 0
i=0
while [ "$i" -lt "$tries" ]; do
  if curl -fsS -o /dev/null --max-time 2 "$url"; then
    exit 0
  fi
  i=$((i + 1))
  sleep 2
done
echo "model server at $url did not answer after $tries tries" >&2
exit 1
