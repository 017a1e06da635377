#!/bin/sh
# Stand-in for the GitHub Actions runner in the github_test.py image (the VM
# has no NIC, so it cannot reach the fake). It reads the --jitconfig input
# where the real runner does (ACTIONS_RUNNER_INPUT_JITCONFIG), decodes it the
# same way (base64 of a JSON map of base64-encoded files), and proves it got
# the config by printing the runner name from .runner and a digest of the
# whole decoded config, never the config itself. Then it "runs the job":
# a few seconds, or until the VM is stopped when the fake asked it to hold.
set -eu
cfg=${ACTIONS_RUNNER_INPUT_JITCONFIG:-}
[ -n "$cfg" ] || { echo "stand-in runner: no JIT config" >&2; exit 2; }
decoded=$(printf '%s' "$cfg" | base64 -d) || { echo "stand-in runner: not base64" >&2; exit 3; }
runner=$(printf '%s' "$decoded" | sed -n 's/.*"\.runner": *"\([A-Za-z0-9+/=]*\)".*/\1/p' | base64 -d)
name=$(printf '%s' "$runner" | sed -n 's/.*"agentName": *"\([^"]*\)".*/\1/p')
mode=$(printf '%s' "$runner" | sed -n 's/.*"agentlabTestMode": *"\([^"]*\)".*/\1/p')
sum=$(printf '%s' "$decoded" | sha256sum | cut -d' ' -f1)
echo "stand-in runner: agentName=$name mode=$mode config-sha256=$sum"
case $mode in
hold) sleep 600 ;;
*) sleep 8 ;;
esac
echo "stand-in runner: job done"
