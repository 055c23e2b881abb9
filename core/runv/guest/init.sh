#!/bin/sh
# /init of the runv guest: mount the kernel filesystems, load the modules, hand over to the agent.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
# The modules the VM's devices need, by name in load order, in one busybox process (0.1 s less than an
# insmod each under TCG); modprobe reports a module that fails and goes on. The kernel loads the
# others (filesystems, device-mapper targets) through /sbin/modprobe when it first needs them.
modprobe -a $(cat /etc/runv/modules)
# The guest's userland from the host's read-only image, where the hypervisor maps it (QEMU's
# virtio-pmem: with DAX its pages are the host's page cache, one copy for every VM); what the
# initrd has under /usr (the lean one: the modules loaded above) is deleted (runv.guest.userland).
if [ -b /dev/pmem0 ] && mount -t erofs -o ro,dax=always /dev/pmem0 /mnt; then
  /bin/busybox rm -rf /usr && /bin/busybox mkdir /usr && /bin/busybox mount --move /mnt /usr
fi
# What `-m runv.agent` runs, without the imports of runpy (≈0.1 s under TCG).
cd /usr/lib/runv-agent && exec /usr/bin/python3.11 -S -B -c 'from runv.agent.__main__ import main; main()'
