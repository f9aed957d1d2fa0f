"""``python3 -m supernode_runtime`` entry point."""

import sys

from supernode_runtime.cli import main

if __name__ == "__main__":
    sys.exit(main())
