#!/usr/bin/env bash
# Provisions a Debian 12 machine for volsnap's LVM and ZFS scenarios.
# Shared by the Vagrantfile and the qemu runner (scripts/vm-lane).
#   provision.sh install   Debian packages (docker.io, lvm2, thin-provisioning-tools,
#                          xfsprogs, zfs-dkms/zfsutils-linux from contrib)
#   provision.sh build     builds volsnap and the local test image
#   provision.sh storage   the volume group vsvg on $LVM_DISK (LVs ext, xfs, and thin
#                          on a thin pool) mounted under /mnt/lvm-*, and the ZFS pool
#                          vspool on $ZFS_DISK (dataset vspool/data), when given
set -euo pipefail
PACKAGES="docker.io lvm2 thin-provisioning-tools xfsprogs e2fsprogs busybox-static zstd"

lvm_conf() {
  # Without udev (minimal guests), LVM must not wait for it.
  if ! pidof systemd-udevd udevd >/dev/null 2>&1; then
    mkdir -p /etc/lvm
    cat > /etc/lvm/lvmlocal.conf <<'CONF'
activation {
    udev_sync = 0
    udev_rules = 0
    monitoring = 0
}
devices {
    obtain_device_list_from_udev = 0
}
CONF
  fi
}

case "${1:-}" in
  install)
    sed -i 's/^Components: main$/Components: main contrib/' /etc/apt/sources.list.d/*.sources 2>/dev/null || true
    sed -i -E 's/^(deb .* main)$/\1 contrib/' /etc/apt/sources.list 2>/dev/null || true
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $PACKAGES "linux-headers-$(uname -r)" zfs-dkms zfsutils-linux
    ;;
  build)
    command -v cargo >/dev/null || { apt-get install -y -qq cargo; }
    cargo build --release
    install -m 0755 target/release/volsnap /usr/local/bin/volsnap
    systemctl start docker 2>/dev/null || true
    scripts/test-image.sh
    ;;
  storage)
    lvm_conf
    if [ -n "${LVM_DISK:-}" ] && ! vgs vsvg >/dev/null 2>&1; then
      pvcreate -q "$LVM_DISK"
      vgcreate -q vsvg "$LVM_DISK"
      lvcreate -q -L 384M -n ext vsvg
      lvcreate -q -L 384M -n xfs vsvg
      lvcreate -q -L 512M --thinpool pool vsvg
      lvcreate -q -V 384M --thin -n thin vsvg/pool
      mkfs.ext4 -q /dev/vsvg/ext
      mkfs.xfs -q /dev/vsvg/xfs
      mkfs.ext4 -q /dev/vsvg/thin
    fi
    for lv in ext xfs thin; do
      mkdir -p /mnt/lvm-$lv
      mountpoint -q /mnt/lvm-$lv || mount /dev/vsvg/$lv /mnt/lvm-$lv
    done
    if [ -n "${ZFS_DISK:-}" ] && command -v zpool >/dev/null; then
      vdev=$ZFS_DISK
      # Without udev, zpool cannot wait for the partitions it makes on a
      # whole disk: use a file vdev on it instead.
      if ! pidof systemd-udevd udevd >/dev/null 2>&1; then
        mkdir -p /mnt/zfs-backing
        mountpoint -q /mnt/zfs-backing || { mkfs.ext4 -q -F "$ZFS_DISK" && mount "$ZFS_DISK" /mnt/zfs-backing; }
        vdev=/mnt/zfs-backing/vspool.img
        [ -f "$vdev" ] || truncate -s 1800M "$vdev"
      fi
      zpool list vspool >/dev/null 2>&1 || zpool create -f -m /vspool vspool "$vdev"
      zfs list vspool/data >/dev/null 2>&1 || zfs create vspool/data
    fi
    ;;
  *)
    echo "usage: provision.sh install|build|storage" >&2; exit 2;;
esac
