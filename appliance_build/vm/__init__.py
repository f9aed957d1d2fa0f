"""Running QEMU: the accelerator probe, firmware lookup, and the VM launcher."""
