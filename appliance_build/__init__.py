"""Build pipeline for Flower SuperNode appliance images.

The stages of a build, in order, each in one module:

  config            images/<name>.toml -> ImageConfig (typed, frozen, validated)
  stages.base       a bootable base disk, cached by a hash of its inputs
  stages.container  the Flower SuperNode container image, built offline from hashed wheels
  stages.render     Packer HCL + cloud-init NoCloud seed from templates/
  stages.packer     the Packer build that runs provision/NN-*.sh inside the VM
  stages.finalize   compress, checksum, manifest

`build.py` runs them as one straight list.
"""
