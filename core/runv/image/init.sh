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
# One path a line, dependencies first; a module that fails is reported and skipped.
while read -r module; do
    insmod "$module" 2>/dev/null || echo "runv-init: cannot load ${module##*/}"
done </etc/runv/modules
cd /usr/lib/runv-agent && exec /usr/bin/python3.11 -S -B -m runv.agent
