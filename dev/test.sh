#!/usr/bin/env bash
# The whole test suite, as README.md states it and .ci/run calls it.
# It installs the real components the end-to-end tests use (Debian's prometheus,
# chromium, kubectl, iptables and iproute2) when they are missing, builds the real
# kube-apiserver and etcd once (cached outside the repository, see
# dev/kubetest/build.sh), then checks formatting, generated code, vet, and runs
# every test with the race detector.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v prometheus >/dev/null || need+=(prometheus)
command -v chromium >/dev/null || need+=(chromium)
command -v kubectl >/dev/null || need+=(kubectl)
command -v iptables-restore >/dev/null || need+=(iptables)
command -v ip >/dev/null || need+=(iproute2)
if [ ${#need[@]} -gt 0 ]; then
	echo "test.sh: installing ${need[*]} (Debian packages) for the end-to-end tests"
	sudo=""
	[ "$(id -u)" -eq 0 ] || sudo="sudo"
	$sudo apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

echo "test.sh: gofmt"
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then
	echo "gofmt would change:" $unformatted >&2
	exit 1
fi

echo "test.sh: templ generate (must leave no diff)"
before=$(find . -name '*_templ.go' -exec sha256sum {} + | sort)
go tool templ generate -path . >/dev/null
after=$(find . -name '*_templ.go' -exec sha256sum {} + | sort)
if [ "$before" != "$after" ]; then
	echo "templ generate changed *_templ.go: commit the regenerated code" >&2
	exit 1
fi

echo "test.sh: kube-apiserver and etcd for the Kubernetes tests"
bash dev/kubetest/build.sh

echo "test.sh: go vet"
go vet ./...

echo "test.sh: go test -race"
go test -race -count=1 -timeout 30m "$@" ./...
