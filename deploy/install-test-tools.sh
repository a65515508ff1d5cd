#!/usr/bin/env bash
# What the test suite needs beyond .venv, from Debian's packages: Chromium for the ranking page's
# browser tests (driven by Playwright from PyPI, which cannot download its own browser here) and
# Prometheus with promtool for the monitoring tests, nginx for the compose balancer's test in front of
# two gateways, a Java runtime and Maven for the Kafka broker the tests start (Kafka's jars come
# from Maven Central); and, built with Go from the Go module proxy, compose-check
# (deploy/compose/check: compose-go, the loader of `docker compose`) and, without kubectl,
# kustomize, for the deployment stack's test. Idempotent: installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# Go: compose-go needs the Go its go.mod names, newer than Debian 12's 1.19. Without one, the Go
# toolchain is fetched as the module golang.org/toolchain from the Go module proxy (the same file
# the go command's own toolchain switch downloads), checked against a pinned sha256.
GO_NEEDED=$(sed -n 's/^go \([0-9.]*\)$/\1/p' deploy/compose/check/go.mod)
GO_MODULE=v0.0.1-go1.24.0.linux-amd64
GO_SHA256=39ad33636fa17d737bac55a2971239ce8bc0c9e5fb600012a630c3875813a767
new_enough_go() {
  command -v go >/dev/null 2>&1 || return 1
  printf '%s\n%s\n' "$GO_NEEDED" "$(GOTOOLCHAIN=local go env GOVERSION | sed 's/^go//')" | sort -V -C
}
[ -x .cache/go/bin/go ] && export PATH="$PWD/.cache/go/bin:$PATH"
if ! new_enough_go; then
  [ "$(uname -m)" = x86_64 ] || { echo "install-test-tools: need Go >= $GO_NEEDED on the PATH" >&2; exit 1; }
  echo "install-test-tools: fetching Go ($GO_MODULE) from the Go module proxy into .cache/go (once)"
  python3 - "$GO_MODULE" "$GO_SHA256" <<'PY'
import hashlib, io, os, stat, sys, urllib.request, zipfile

module, sha256 = sys.argv[1], sys.argv[2]
proxy = os.environ.get("GOPROXY", "https://proxy.golang.org").split(",")[0]
if proxy in ("direct", "off"):
    proxy = "https://proxy.golang.org"
data = urllib.request.urlopen(f"{proxy}/golang.org/toolchain/@v/{module}.zip", timeout=300).read()
if hashlib.sha256(data).hexdigest() != sha256:
    sys.exit(f"install-test-tools: the Go toolchain from {proxy} does not match its pinned sha256")
prefix = f"golang.org/toolchain@{module}/"
with zipfile.ZipFile(io.BytesIO(data)) as z:
    for entry in z.infolist():
        path = os.path.join(".cache/go", entry.filename.removeprefix(prefix))
        if entry.is_dir():
            continue
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(z.read(entry))
        if "/bin/" in path or "/pkg/tool/" in path:
            os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
PY
  export PATH="$PWD/.cache/go/bin:$PATH"
fi
export GOTOOLCHAIN=local

if [ ! -x .cache/bin/compose-check ] || [ deploy/compose/check/main.go -nt .cache/bin/compose-check ]; then
  echo "install-test-tools: building compose-check (once)"
  (cd deploy/compose/check && go build -o ../../../.cache/bin/compose-check .)
fi
# The Kubernetes manifests are built with kustomize: kubectl's own, or the standalone one.
if ! command -v kubectl >/dev/null 2>&1 && [ ! -x .cache/bin/kustomize ]; then
  echo "install-test-tools: building kustomize (once; no kubectl here)"
  GOBIN="$PWD/.cache/bin" go install sigs.k8s.io/kustomize/kustomize/v5@v5.5.0
fi
missing=()
command -v java >/dev/null 2>&1 || missing+=(default-jre-headless)  # OpenJDK 17 on Debian 12
command -v mvn >/dev/null 2>&1 || missing+=(maven)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)  # the compose balancer, in front of two replicas
[ ${#missing[@]} -eq 0 ] && { echo "install-test-tools: java, maven, chromium, prometheus, nginx, compose-check present"; exit 0; }
bash deploy/apt-install.sh "${missing[@]}"
echo "install-test-tools: $(chromium --version 2>/dev/null | head -1); $(promtool --version 2>&1 | head -1); $(/usr/sbin/nginx -v 2>&1)"
