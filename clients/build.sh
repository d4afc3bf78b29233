#!/usr/bin/env bash
# Install the toolchain for, generate the stubs of, and build each client package of Tierwise's gRPC API here,
# offline from the Go module proxy and Maven Central (clients/README.md says what a user runs instead).
#
#   clients/build.sh [node|go|java|all]...      (no argument = all)
#   clients/build.sh go-stubs [DIR]             regenerate the Go module's checked-in stubs (clients/go/tierwisev1)
#
# Everything comes from package registries through their ordinary clients: Debian's apt (Go, protoc, the
# grpc-go and grpc-java packages, a JDK) and npm (the locked @grpc/grpc-js, @grpc/proto-loader, typescript).
# No Go module proxy, no Maven, no downloaded binaries. Node's and Java's stubs are generated from protos/ on
# every rebuild into the gitignored build directories; Go's are checked in, as a Go module needs. Each language's
# step is skipped while a stamp holding the hash of its inputs (protos, sources, lock file, this script)
# matches, so a second run takes about a second.
#
# Afterwards, clients/<lang>/build/run is the example: `clients/<lang>/build/run --address HOST:PORT QUERY...`
# prints one JSON line for Route and one for CompleteStream.
#
# Exit status: 0 built; 1 a generation or build step failed; 2 usage;
#              3 the toolchain could not be installed (no apt/npm, not root, a registry unreachable).
# CLIENTS_NO_INSTALL=1 never installs anything: a missing package is then reported with status 3.
set -euo pipefail

CLIENTS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SELF="$CLIENTS/$(basename "${BASH_SOURCE[0]}")"
ROOT="$(dirname "$CLIENTS")"
PROTOS="$ROOT/protos"
PROTO_FILES=(tierwise/v1/router.proto tierwise/v1/classifier.proto)
STATE="$CLIENTS/build"          # shared: apt lock and "apt-get update ran" stamp
export DEBIAN_FRONTEND=noninteractive

GO_PACKAGES=(golang-go protobuf-compiler protoc-gen-go protoc-gen-go-grpc golang-google-grpc-dev
             golang-google-protobuf-dev golang-github-golang-protobuf-1-5-dev)
# grpc-java's Debian package under-declares its runtime dependencies, hence the explicit list.
JAVA_PACKAGES=(protobuf-compiler protobuf-compiler-grpc-java-plugin libgrpc-java libprotobuf-java
               libguava-java libgoogle-gson-java libperfmark-java libjsr305-java liberror-prone-java
               libnetty-java libgeronimo-annotation-1.3-spec-java)
JAVA_JARS=(grpc-api grpc-context grpc-core grpc-netty grpc-protobuf grpc-protobuf-lite grpc-stub protobuf
           guava gson perfmark-api jsr305 error-prone-annotations
           netty-buffer netty-codec netty-codec-http netty-codec-http2 netty-codec-socks netty-common
           netty-handler netty-handler-proxy netty-resolver netty-transport netty-transport-native-unix-common)
JAVA_COMPILE_ONLY_JARS=(geronimo-annotation-1.3-spec)   # javax.annotation.Generated in the grpc stubs

log() { printf 'clients/build.sh: %s\n' "$*" >&2; }
unavailable() { log "$LANG_NAME: toolchain unavailable: $*"; exit 3; }
failed() { log "$LANG_NAME: build failed: $*"; exit 1; }

now() { date +%s.%N; }
# timed LABEL CMD...: run CMD, then log how long it took.
timed() {
  local label=$1 start rc=0; shift
  start=$(now)
  "$@" || rc=$?
  log "$LANG_NAME: $label $(awk -v a="$start" -v b="$(now)" 'BEGIN{printf "%.1fs", b-a}')$([ $rc = 0 ] || echo " (failed, status $rc)")"
  return $rc
}

# inputs_hash FILE...: one hash over this script, the protos and the given files.
inputs_hash() {
  { cat "$SELF"; for p in "${PROTO_FILES[@]}"; do cat "$PROTOS/$p"; done; cat "$@"; } | sha256sum | cut -d' ' -f1
}
fresh() { [ -f "$1" ] && [ "$(cat "$1")" = "$2" ]; }   # fresh STAMP HASH

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo -n "$@"
  else return 126
  fi
}

missing_debs() {
  local p
  for p in "$@"; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || printf '%s ' "$p"
  done
}

# need_debs PACKAGE...: apt-get install whatever is missing (apt-get update at most once an hour).
need_debs() {
  if ! command -v dpkg-query >/dev/null || ! command -v apt-get >/dev/null; then
    unavailable "needs Debian/Ubuntu apt to install: $*"
  fi
  local missing; missing=$(missing_debs "$@")
  [ -z "$missing" ] && return 0
  [ "${CLIENTS_NO_INSTALL:-}" = 1 ] && unavailable "missing Debian packages (CLIENTS_NO_INSTALL=1): $missing"
  if [ "$(id -u)" != 0 ] && ! { command -v sudo >/dev/null && sudo -n true 2>/dev/null; }; then
    unavailable "needs root (or password-less sudo) to apt-get install: $missing"
  fi
  mkdir -p "$STATE"
  (
    flock -w 900 9 || exit 1
    missing=$(missing_debs "$@")            # another build may have installed them meanwhile
    [ -z "$missing" ] && exit 0
    local apt=(apt-get -o DPkg::Lock::Timeout=300 -q)
    if [ -z "$(find "$STATE/apt-updated" -mmin -60 2>/dev/null)" ]; then
      timed "apt-get update" as_root "${apt[@]}" update >&2 || exit 1
      touch "$STATE/apt-updated"
    fi
    # shellcheck disable=SC2086
    timed "apt-get install $missing" as_root "${apt[@]}" install -y --no-install-recommends $missing >&2
  ) 9>"$STATE/apt.lock" || unavailable "apt-get could not install: $(missing_debs "$@")(see the apt output above)"
}

# write_run FILE COMMAND...: the example's launcher; COMMAND may use $here, the launcher's directory.
# shellcheck disable=SC2016  # $here, $0 and $@ are for the launcher to expand
write_run() {
  local file=$1; shift
  { echo '#!/bin/sh'; echo '# Generated by clients/build.sh: the example client; arguments: [--address HOST:PORT] [--strategy NAME] QUERY...'
    echo 'here="$(cd "$(dirname "$0")" && pwd)"'; printf 'exec %s "$@"\n' "$*"; } >"$file"
  chmod +x "$file"
}

build_node() {
  local dir="$CLIENTS/node" major
  cd "$dir"
  if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    need_debs nodejs npm
  fi
  major=$(node -p 'process.versions.node.split(".")[0]')
  [ "$major" -ge 18 ] || unavailable "node >= 18 needed, found $(node --version)"
  mkdir -p build
  local hash; hash=$(inputs_hash package.json package-lock.json tsconfig.json src/*.ts)
  if fresh build/.stamp "$hash" && [ -x build/run ]; then log "node: up to date"; return 0; fi
  if ! fresh build/.npm-stamp "$(sha256sum <package-lock.json)" || [ ! -d node_modules ]; then
    # --ignore-scripts: nothing here needs an install script (protobufjs's only checks versions).
    timed "npm ci" npm ci --no-audit --no-fund --ignore-scripts --loglevel=error >&2 \
      || unavailable "npm ci failed (is the npm registry reachable?)"
    sha256sum <package-lock.json >build/.npm-stamp
  fi
  rm -rf gen proto build/src build/gen
  timed "generate types (proto-loader-gen-types)" npm run --silent gen >/dev/null || failed "proto-loader-gen-types"
  timed "compile (tsc)" npm run --silent build >&2 || failed "tsc"
  # shellcheck disable=SC2016
  write_run build/run node '"$here/src/cli.js"'
  echo "$hash" >build/.stamp
}

GO_MODULE=github.com/tierwise/tierwise/clients/go   # clients/go/go.mod

# go_stubs DIR: generate the module's package tierwisev1 (router.proto) into DIR/tierwisev1 with Debian's protoc and
# plugins. The stubs are checked in (a Go module is built from its sources); tests compare them to a fresh run.
go_stubs() {
  local to=$1 m="Mtierwise/v1/router.proto=$GO_MODULE/tierwisev1"
  mkdir -p "$to/tierwisev1"
  /usr/bin/protoc -I "$PROTOS" --plugin=protoc-gen-go=/usr/bin/protoc-gen-go \
    --plugin=protoc-gen-go-grpc=/usr/bin/protoc-gen-go-grpc \
    --go_out="$to" --go_opt="module=$GO_MODULE" --go_opt="$m" \
    --go-grpc_out="$to" --go-grpc_opt="module=$GO_MODULE" --go-grpc_opt="$m" tierwise/v1/router.proto
}

build_go() {
  local dir="$CLIENTS/go" out="$CLIENTS/go/build"
  cd "$dir"
  need_debs "${GO_PACKAGES[@]}"
  mkdir -p "$out"
  local hash; hash=$(inputs_hash go.mod tierwisev1/*.go cmd/*/*.go)
  if fresh "$out/.stamp" "$hash" && [ -x "$out/run" ]; then log "go: up to date"; return 0; fi
  rm -rf "${out:?}/gopath" "${out:?}/bin"
  # GOPATH mode against Debian's Go sources in /usr/share/gocode (no module downloads): the module is linked in
  # at its import path, and go.mod is ignored.
  mkdir -p "$out/gopath/src/$(dirname "$GO_MODULE")" "$out/bin"
  ln -s "$dir" "$out/gopath/src/$GO_MODULE"
  timed "compile (go build)" env -u GOFLAGS GO111MODULE=off GOTOOLCHAIN=local GOPROXY=off \
    GOPATH="$out/gopath:/usr/share/gocode" GOCACHE="$out/cache" \
    /usr/bin/go build -o "$out/bin/tierwise-example" "$GO_MODULE/cmd/tierwise-example" || failed "go build"
  # shellcheck disable=SC2016
  write_run "$out/run" '"$here/bin/tierwise-example"'
  echo "$hash" >"$out/.stamp"
}

java_classpath() {
  local jar cp=""
  for jar in "$@"; do
    [ -f "/usr/share/java/$jar.jar" ] || unavailable "/usr/share/java/$jar.jar is missing"
    cp="$cp:/usr/share/java/$jar.jar"
  done
  echo "${cp#:}"
}

build_java() {
  local dir="$CLIENTS/java" out="$CLIENTS/java/build" version
  cd "$dir"
  version=$(javac -version 2>&1 | sed -n 's/^javac \([0-9]*\).*/\1/p' || true)
  if [ -z "$version" ] || [ "$version" -lt 11 ]; then
    need_debs default-jdk-headless
    version=$(javac -version 2>&1 | sed -n 's/^javac \([0-9]*\).*/\1/p' || true)
    if [ -z "$version" ] || [ "$version" -lt 11 ]; then unavailable "javac >= 11 needed, found '${version:-none}'"; fi
  fi
  need_debs "${JAVA_PACKAGES[@]}"
  mkdir -p "$out"
  local sources; mapfile -t sources < <(find src -name '*.java' | sort)
  local hash; hash=$(inputs_hash "${sources[@]}")
  if fresh "$out/.stamp" "$hash" && [ -x "$out/run" ]; then log "java: up to date"; return 0; fi
  local runtime; runtime=$(java_classpath "${JAVA_JARS[@]}")
  local compile; compile="$runtime:$(java_classpath "${JAVA_COMPILE_ONLY_JARS[@]}")"
  rm -rf "${out:?}/gen" "${out:?}/classes"
  mkdir -p "$out/gen" "$out/classes"
  timed "generate stubs (protoc, grpc_java_plugin)" /usr/bin/protoc -I "$PROTOS" --java_out="$out/gen" \
    --plugin=protoc-gen-grpc-java=/usr/bin/grpc_java_plugin --grpc-java_out="$out/gen" "${PROTO_FILES[@]}" \
    || failed "protoc"
  mapfile -t sources < <(find "$out/gen" src -name '*.java' | sort)
  timed "compile (javac)" javac -J-XX:TieredStopAtLevel=1 -J-XX:+UseSerialGC -nowarn -encoding UTF-8 --release 11 -d "$out/classes" -cp "$compile" \
    "${sources[@]}" || failed "javac"
  write_run "$out/run" java -cp "\"\$here/classes:$runtime\"" dev.tierwise.example.Example
  echo "$hash" >"$out/.stamp"
}

main() {
  if [ "${1:-}" = go-stubs ]; then   # clients/build.sh go-stubs [DIR]: regenerate the Go module's stubs
    LANG_NAME=go
    need_debs "${GO_PACKAGES[@]}"
    go_stubs "${2:-$CLIENTS/go}"
    return
  fi
  local langs=("$@") lang
  [ ${#langs[@]} = 0 ] && langs=(all)
  [ "${langs[*]}" = all ] && langs=(node go java)
  for lang in "${langs[@]}"; do
    case $lang in
      node|go|java) ;;
      -h|--help) sed -n '2,/^set -euo/p' "$SELF" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
      *) log "unknown language '$lang' (node, go, java or all)"; exit 2 ;;
    esac
  done
  local status=0 rc start
  for lang in "${langs[@]}"; do
    LANG_NAME=$lang
    start=$(now)
    # Each language in a subshell of its own, under a lock so concurrent builds of one language queue.
    mkdir -p "$CLIENTS/$lang/build"
    rc=0
    ( flock 8; "build_$lang" ) 8>"$CLIENTS/$lang/build/.lock" || rc=$?
    if [ $rc = 0 ]; then
      log "$lang: ready in $(awk -v a="$start" -v b="$(now)" 'BEGIN{printf "%.1fs", b-a}'): clients/$lang/build/run"
    elif [ $rc = 3 ]; then
      [ $status = 0 ] && status=3
    else
      status=1
    fi
  done
  return $status
}

main "$@"
