"""Run a command with a Debian root's kernel filesystems mounted, in a private mount namespace.

/proc, /sys, /dev and a tmpfs /run are mounted into the root as mmdebstrap provides them to its
hooks (mmdebstrap(1), "HOOKS"), plus any bind mounts asked for; the namespace is the command's
own (unshare(1) --mount --propagation private), so nothing stays mounted when it ends, whatever
way it ends. Paths and commands are arguments of a fixed script, never part of its text.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MOUNTS = r"""set -eu
root=$1; shift
mount -t proc proc "$root/proc"
mount --rbind /sys "$root/sys"
mount --rbind /dev "$root/dev"
mount -t tmpfs tmpfs "$root/run"
while [ "$1" != "--" ]; do
    source=$1; target=$root$2; mode=$3; shift 3
    if [ -d "$source" ]; then
        mkdir -p "$target"
    else
        mkdir -p "$(dirname "$target")"
        touch "$target"
    fi
    mount --bind -o "$mode" "$source" "$target"
done
shift
exec "$@"
"""


@dataclass(frozen=True)
class Bind:
    source: Path  # a file or directory on the host
    target: str  # where it appears, absolute inside the root
    read_only: bool = False


def argv(root: Path, command: list[str], binds: tuple[Bind, ...] = ()) -> list[str]:
    """The command line that runs `command` (a host path, e.g. chroot ROOT ...) with `root`'s
    mounts in place."""
    pairs = [arg for b in binds for arg in (str(b.source), b.target, "ro" if b.read_only else "rw")]
    unshare = ["unshare", "--mount", "--propagation", "private", "--fork"]
    return [*unshare, "sh", "-c", MOUNTS, "private-root", str(root), *pairs, "--", *command]
