#!/usr/bin/env bash
# Installs what rkt-rs needs on a fresh Debian 12 machine (as root): the static
# busybox its test and example images are built from; systemd-nspawn
# (systemd-container) for the nspawn stage1; the CNI plugins and iptables for pod
# networks; for the remote-image tests gnupg (keys and signatures), docker-registry
# and skopeo (a registry to push OCI images into) and openssl (a TLS server for the
# https tests).
# Then, without recommends: for the kvm stage1 QEMU (qemu-system-x86), Debian's
# kernel (linux-image-amd64: the guest's kernel and modules) and iproute2 (the pod's
# bridge and tap); for the appc ACE validator (conformance kit) the Go toolchain
# and the appc spec's Go source with its dependencies, built offline in GOPATH mode;
# protoc for the rkt-api crate's generated gRPC code. QEMU's recommends alone would
# pull in a desktop's worth of display and firmware packages.
# Idempotent and quiet when everything is already there.
set -euo pipefail

# install [apt-get install options...] -- packages...: installs the missing ones.
install() {
    local opts=() missing=()
    while [[ $1 != -- ]]; do opts+=("$1"); shift; done
    shift
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    ((${#missing[@]})) || return 0
    echo "setup: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${opts[@]}" "${missing[@]}" >/dev/null
}

install -- busybox-static systemd-container containernetworking-plugins iptables gnupg docker-registry \
    skopeo openssl
install --no-install-recommends -- qemu-system-x86 linux-image-amd64 iproute2 \
    golang-go golang-github-appc-spec-dev golang-github-coreos-go-semver-dev golang-github-spf13-pflag-dev \
    golang-go4-dev golang-golang-x-net-dev golang-gopkg-inf.v0-dev \
    protobuf-compiler
command -v cargo >/dev/null || { echo "setup: cargo is required (rustup.rs)" >&2; exit 1; }
