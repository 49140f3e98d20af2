#!/usr/bin/env bash
# Installs what rkt-rs needs on a fresh Debian 12 machine (as root): the static
# busybox its test and example images are built from; systemd-nspawn
# (systemd-container) for the nspawn stage1; the CNI plugins and iptables for pod
# networks; for the remote-image tests gnupg (keys and signatures), docker-registry
# and skopeo (a registry to push OCI images into) and openssl (a TLS server for the
# https tests); for the appc ACE validator (conformance kit) the Go toolchain and
# the appc spec's Go source with its dependencies, built offline in GOPATH mode.
# Idempotent and quiet when everything is already there.
set -euo pipefail

packages=(busybox-static systemd-container containernetworking-plugins iptables gnupg docker-registry skopeo openssl)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "setup: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
fi
go_packages=(golang-go golang-github-appc-spec-dev golang-github-coreos-go-semver-dev golang-github-spf13-pflag-dev
    golang-go4-dev golang-golang-x-net-dev golang-gopkg-inf.v0-dev)
missing=()
for p in "${go_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "setup: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# protoc: the rkt-api crate generates its gRPC code at build time.
if ! dpkg-query -W -f='${Status}' protobuf-compiler 2>/dev/null | grep -q "install ok installed"; then
    echo "setup: installing protobuf-compiler" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends protobuf-compiler >/dev/null
fi
command -v cargo >/dev/null || { echo "setup: cargo is required (rustup.rs)" >&2; exit 1; }
