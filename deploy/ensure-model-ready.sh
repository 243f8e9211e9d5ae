#!/bin/sh
# Wait (bounded) for the model backend and load the active model before traffic arrives, so
# the first message is not the one that discovers the backend is still loading.
# Usage: ensure-model-ready.sh [hearthbot options, e.g. --config FILE]
# This is `hearthbot warm`: it asks the backend gateway.residency.wait_tries times,
# wait_seconds apart, then loads the model with keep_alive (Ollama) or a one-token completion
# (OpenAI-compatible servers). With the service running, the service's own model is warmed.
# `hearthbot run` does the same at start, so a service unit needs no separate step.
exec "${HEARTHBOT:-hearthbot}" "$@" warm
