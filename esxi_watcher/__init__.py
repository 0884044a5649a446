"""esxi-watcher: turn VMware ESXi installer ISOs dropped in a folder into MAAS boot resources."""

__version__ = "0.1.0"
