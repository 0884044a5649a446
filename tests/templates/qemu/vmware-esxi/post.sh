# Sourced by the shell-local post-processor after ../scripts/fuse-nbd, as packer-maas's post.sh is:
# copy the curtin hooks into partition 1 of the installed disk.
BOOT_DIR="${TMP_DIR:?}/boot"
echo 'post.sh: adding curtin hooks to partition 1'
mount_part 1 "$BOOT_DIR" fusefat
cp -rv curtin "$BOOT_DIR"
echo 'post.sh: done'
