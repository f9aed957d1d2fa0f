"""e2e_app: a small Flower app (NumPy only) for the appliance end-to-end run."""
