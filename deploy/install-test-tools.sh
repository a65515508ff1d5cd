#!/usr/bin/env bash
# What the test suite needs beyond .venv, from Debian's packages: Chromium for the ranking page's
# browser tests (driven by Playwright from PyPI, which cannot download its own browser here) and
# Prometheus with promtool for the monitoring tests, nginx for the compose balancer's test in front of
# two gateways; and, built with Go from the Go module proxy,
# compose-check (deploy/compose/check: compose-go, the loader of `docker compose`) and, without
# kubectl, kustomize, for the deployment stack's test. Idempotent: installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .cache/bin/compose-check ] || [ deploy/compose/check/main.go -nt .cache/bin/compose-check ]; then
  command -v go >/dev/null 2>&1 || { echo "install-test-tools: Go is needed to build compose-check (Debian: golang)" >&2; exit 1; }
  echo "install-test-tools: building compose-check (once)"
  (cd deploy/compose/check && go build -o ../../../.cache/bin/compose-check .)
fi
# The Kubernetes manifests are built with kustomize: kubectl's own, or the standalone one.
if ! command -v kubectl >/dev/null 2>&1 && [ ! -x .cache/bin/kustomize ]; then
  echo "install-test-tools: building kustomize (once; no kubectl here)"
  GOBIN="$PWD/.cache/bin" go install sigs.k8s.io/kustomize/kustomize/v5@v5.5.0
fi
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)  # the compose balancer, in front of two replicas
[ ${#missing[@]} -eq 0 ] && { echo "install-test-tools: chromium, prometheus, nginx and compose-check present"; exit 0; }
bash deploy/apt-install.sh "${missing[@]}"
echo "install-test-tools: $(chromium --version 2>/dev/null | head -1); $(promtool --version 2>&1 | head -1); $(/usr/sbin/nginx -v 2>&1)"
