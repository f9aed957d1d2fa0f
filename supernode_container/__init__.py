"""Code that runs inside the SuperNode container (the venv at /opt/flwr), not on the build host.

- :mod:`supernode_container.entrypoint`: the container's entrypoint; starts and supervises the
  warm ClientApp launcher and ``flower-supernode``;
- :mod:`supernode_container.warm_clientapp`: the launcher server (imports flwr's ClientApp
  runtime once, forks one child per task);
- :mod:`supernode_container.flwr_clientapp_shim`: the ``flwr-clientapp`` put first on PATH
  (stdlib only, run as ``python -I -S``);
- :mod:`supernode_container.pyc_check`: compile and verify the .pyc of every module at build time.

This package imports nothing at module level: ``python -m supernode_container.warm_clientapp``
must set its single-thread environment before anything can import numpy.
"""
