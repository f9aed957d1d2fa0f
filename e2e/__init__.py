"""End-to-end run: a real SuperLink on this host, appliance VMs as SuperNodes, `flwr run`.

    python -m e2e.runner [--image supernode-cpu] [--faults] [--rounds 3]

See :mod:`e2e.runner`.
"""
