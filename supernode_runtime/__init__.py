"""Boot-time runtime of the Flower SuperNode appliance for OpenNebula.

This package runs inside the appliance VM (Debian 12, python3 3.11) and on the
build host (``nox -s check_context``). It uses the Python standard library only.

Module layout:

* :mod:`.variables`      - the single table of context variables (the source of truth)
* :mod:`.validators`     - the validation rules the table refers to
* :mod:`.variable_docs`  - USER_INPUTS and the Markdown table, generated from the table
* :mod:`.context_parser` - ``context.sh`` parsed as data (state machine, never sourced)
* :mod:`.context`        - finding/mounting the CONTEXT CD, override file, OneGate token
* :mod:`.config`         - context values -> validated effective configuration
* :mod:`.onegate`        - OneGate client (service discovery, VM attribute publishing)
* :mod:`.gpu`            - GPU detection step (lsmod + nvidia-smi, CPU fallback)
* :mod:`.launch`         - build info, ``docker run`` argv, launch spec, exec
* :mod:`.status`         - status file, text status and login banner
* :mod:`.bootseq`        - the numbered boot sequence
* :mod:`.cli`            - ``python3 -m supernode_runtime ...``
* :mod:`.flower_device`  - device helper for ClientApps inside the container
"""

__version__ = "0.1.0"
