#!/usr/bin/env bash
# Installs what rkt-rs needs on a fresh Debian 12 machine (as root): the static
# busybox its test and example images are built from; systemd-nspawn
# (systemd-container) for the nspawn stage1; the CNI plugins and iptables for pod
# networks; for the remote-image tests gnupg (keys and signatures), docker-registry
# and skopeo (a registry to push OCI images into) and openssl (a TLS server for the
# https tests); for the kvm stage1 QEMU (qemu-system-x86), Debian's kernel
# (linux-image-amd64: the guest's kernel and modules) and iproute2 (the pod's
# bridge and tap). Idempotent and quiet when everything is already there.
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
# Without recommends: QEMU's would pull in a desktop's worth of display and
# firmware packages, the kernel's firmware and initramfs tools nobody here uses.
kvm_packages=(qemu-system-x86 linux-image-amd64 iproute2)
kvm_missing=()
for p in "${kvm_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || kvm_missing+=("$p")
done
if ((${#kvm_missing[@]})); then
    echo "setup: installing ${kvm_missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${kvm_missing[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "setup: cargo is required (rustup.rs)" >&2; exit 1; }
