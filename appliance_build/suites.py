"""The Debian releases a base is bootstrapped from, and what each one implies.

One table, read by the definition's validation (which providers exist), the base recipe
(the suite and its networking) and the container stage (the suite, its python3 and the
manylinux tags its glibc can load).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DebianSuite:
    provider: str  # base.provider in a definition
    codename: str  # the archive suite
    version: str  # Debian's major version
    python: str  # the suite's python3: the container's wheels must be built for it
    glibc_minor: int  # its glibc is 2.<minor>: the newest manylinux_2_<minor> wheel it can load
    # How the booted base gets its network from cloud-init:
    #   "ifupdown"  cloud-init's eni renderer, ifupdown + isc-dhcp-client (Debian 12's way)
    #   "networkd"  cloud-init's networkd renderer, systemd-networkd + systemd-resolved
    #               (Debian 13 marks isc-dhcp-client deprecated: ISC ended the client,
    #               https://www.isc.org/blogs/isc-dhcp-eol/; networkd has its own DHCP client)
    networking: str
    # The Docker engine the appliance runs, installed in the bootstrap chroot with the rest of
    # the base. apparmor: Debian's kernel has AppArmor on and dockerd needs apparmor_parser for
    # its docker-default profile (only a Recommends of docker.io). docker-cli: from Debian 13 on
    # the `docker` command is its own binary package of the docker.io source (a Recommends).
    engine_packages: tuple[str, ...] = ("docker.io", "apparmor")

    @property
    def manylinux_platforms(self) -> list[str]:
        """pip --platform values for x86_64 wheels this suite's python can load, best first
        (PEP 600: manylinux_2_<minor> runs on glibc >= 2.<minor>; manylinux2014 = 2_17)."""
        return [f"manylinux_2_{minor}_x86_64" for minor in range(self.glibc_minor, 16, -1)] + [
            "manylinux2014_x86_64",
            "linux_x86_64",
        ]


SUITES = {
    "debian-12": DebianSuite("debian-12", "bookworm", "12", "3.11", 36, "ifupdown"),
    "debian-13": DebianSuite(
        "debian-13", "trixie", "13", "3.13", 41, "networkd", ("docker.io", "apparmor", "docker-cli")
    ),
}
DEFAULT = "debian-13"


# A downloaded cloud image has no bootstrap chroot: 10-docker-engine.sh installs its engine in the
# build VM. Ubuntu 24.04's docker.io still ships the `docker` command itself.
CLOUD_IMAGE_ENGINE_PACKAGES = {"ubuntu-24.04": ("docker.io", "apparmor")}


def engine_packages(provider: str) -> tuple[str, ...]:
    """The Docker engine packages of a base (base.provider)."""
    suite = SUITES.get(provider)
    return suite.engine_packages if suite else CLOUD_IMAGE_ENGINE_PACKAGES[provider]


def base_packages(provider: str, packages: tuple[str, ...]) -> tuple[str, ...]:
    """Every package the base must have before the build VM configures it: the engine, then a
    definition's `packages`, each once, in that order."""
    return tuple(dict.fromkeys((*engine_packages(provider), *packages)))


def container_suite(provider: str) -> DebianSuite:
    """The suite of the SuperNode container: the base's own for a Debian base; for another
    base (Ubuntu) the current Debian stable (the container shares only the kernel with it)."""
    return SUITES.get(provider, SUITES[DEFAULT])
