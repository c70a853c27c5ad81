#!/bin/sh
# Installs what building, booting and testing Cairn need on Debian 12 (bookworm) or newer.
# Idempotent: packages already present are left alone. Uses sudo unless run as root.
set -eu

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

# program-or-file:package (libostree, libzstd and libssl headers: the builder's OCI export,
# ostree-ext, links them; host binaries never do)
NEEDS="
cc:gcc
/usr/include/stdio.h:libc6-dev
pkg-config:pkg-config
make:make
qemu-system-x86_64:qemu-system-x86
qemu-img:qemu-utils
/usr/share/OVMF/OVMF_CODE_4M.fd:ovmf
/usr/lib/systemd/boot/efi/linuxx64.efi.stub:systemd-boot-efi
mkfs.erofs:erofs-utils
fsck.erofs:erofs-utils
mkfs.ext4:e2fsprogs
mkfs.vfat:dosfstools
mcopy:mtools
sgdisk:gdisk
veritysetup:cryptsetup-bin
/bin/busybox:busybox-static
cpio:cpio
objcopy:binutils
dpkg-deb:dpkg
/usr/bin/pg_ctlcluster:postgresql
openssl:openssl
/usr/bin/etcd:etcd-server
protoc:protobuf-compiler
/usr/include/google/protobuf/descriptor.proto:libprotobuf-dev
genisoimage:genisoimage
ssh:openssh-client
ssh-keygen:openssh-client
/usr/share/doc/python3-venv/copyright:python3-venv
docker-registry:docker-registry
skopeo:skopeo
buildah:buildah
cloud-localds:cloud-image-utils
casync:casync
/usr/include/ostree-1/ostree.h:libostree-dev
ostree:ostree
zstd:zstd
/usr/include/zstd.h:libzstd-dev
/usr/include/openssl/ssl.h:libssl-dev
"

missing=""
for need in $NEEDS; do
    what=${need%%:*}
    pkg=${need##*:}
    case "$what" in
        /*) [ -e "$what" ] && continue ;;
        *) PATH="$PATH:/usr/sbin:/sbin" command -v "$what" >/dev/null 2>&1 && continue ;;
    esac
    case " $missing " in *" $pkg "*) ;; *) missing="$missing $pkg" ;; esac
done

# apt's package lists are also what `cairn build` resolves the image's packages from.
if [ -n "$missing" ] || [ -z "$(ls /var/lib/apt/lists/ 2>/dev/null | grep _Packages || true)" ]; then
    echo "setup: apt-get update" >&2
    $SUDO apt-get update -q
fi

if [ -n "$missing" ]; then
    codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
    # qemu-system-x86 must match qemu-utils' version; a backported qemu-utils (as on some
    # machines) would make apt refuse, so name the distribution's own qemu-utils with it.
    case " $missing " in
        *" qemu-system-x86 "*)
            missing=$(echo "$missing" | tr ' ' '\n' | grep -v '^qemu-utils$' | tr '\n' ' ')
            missing="$missing qemu-utils/$codename" ;;
    esac
    echo "setup: apt-get install$missing" >&2
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends --allow-downgrades $missing
fi

if ! command -v cargo >/dev/null 2>&1; then
    echo "setup: cargo not found; install Rust with https://rustup.rs (curl https://sh.rustup.rs -sSf | sh)" >&2
    exit 1
fi
for component in fmt:rustfmt clippy:clippy; do
    if ! cargo "${component%%:*}" --version >/dev/null 2>&1; then
        echo "setup: cargo ${component%%:*} not found; install it with: rustup component add ${component##*:}" >&2
        exit 1
    fi
done
