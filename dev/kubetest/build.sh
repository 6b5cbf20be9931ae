#!/usr/bin/env bash
# build.sh: builds a real kube-apiserver and etcd from Go modules, once, into a cache outside the
# repository keyed by version, and prints the cache directory. Tests reach it through the kubetest
# package; the test command calls it first so the build is not charged to one test's timeout.
#
# kube-apiserver cannot be `go install`ed: k8s.io/kubernetes' go.mod replaces its 33 staging modules
# (k8s.io/api, k8s.io/client-go, ...) with ./staging paths that do not exist in the module zip. A small
# wrapper module requires k8s.io/kubernetes and replaces each staging module with its published
# v0.X.Y twin instead. The version is stamped through ldflags, or kubectl refuses the server's v0.0.0.
set -euo pipefail

KUBE_VERSION=${KUBE_VERSION:-1.37.2}
ETCD_VERSION=${ETCD_VERSION:-3.7.3}
cache=${MESHSCOPE_KUBE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/meshscope/kube}
dir="$cache/kube-v$KUBE_VERSION-etcd-v$ETCD_VERSION"

if [ -x "$dir/kube-apiserver" ] && [ -x "$dir/etcd" ]; then
	echo "$dir"
	exit 0
fi
mkdir -p "$dir"
exec 9>"$dir.lock"
flock 9 # one build at a time, however many test packages ask
if [ -x "$dir/kube-apiserver" ] && [ -x "$dir/etcd" ]; then
	echo "$dir"
	exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
minor=${KUBE_VERSION#*.}
minor=${minor%%.*}
staging_version="v0.$minor.${KUBE_VERSION##*.}"

echo "kubetest: building kube-apiserver v$KUBE_VERSION (first time only; about 15 minutes on 2 cores)" >&2
mkdir -p "$work/apiserver"
(
	cd "$work/apiserver"
	go mod init meshscope.local/kube-apiserver-build >/dev/null 2>&1
	go mod edit -require "k8s.io/kubernetes@v$KUBE_VERSION"
	gomod=$(go mod download -json "k8s.io/kubernetes@v$KUBE_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
	for m in $(sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => \./staging/.*#\1#p' "$gomod"); do
		go mod edit -replace "$m=$m@$staging_version"
	done
	go get "k8s.io/kubernetes/cmd/kube-apiserver@v$KUBE_VERSION" >/dev/null
	pkg=k8s.io/component-base/version
	ldflags="-s -w -X $pkg.gitVersion=v$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
	ldflags="$ldflags -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
	CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$dir/kube-apiserver.tmp" k8s.io/kubernetes/cmd/kube-apiserver
	mv "$dir/kube-apiserver.tmp" "$dir/kube-apiserver"
)

echo "kubetest: building etcd v$ETCD_VERSION" >&2
mkdir -p "$work/etcd"
(
	cd "$work/etcd"
	go mod init meshscope.local/etcd-build >/dev/null 2>&1
	go get "go.etcd.io/etcd/server/v3@v$ETCD_VERSION" >/dev/null
	CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$dir/etcd.tmp" go.etcd.io/etcd/server/v3
	mv "$dir/etcd.tmp" "$dir/etcd"
)
echo "$dir"
