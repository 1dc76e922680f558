"""How a federation runs: built from a config (assembly), in one process (simulation), or on Flower."""
