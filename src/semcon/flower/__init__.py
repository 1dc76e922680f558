"""semcon on Flower's deployment engine: thin ServerApp/ClientApp adapters around the same round loop,
clients, codec and ledger as the in-process simulation, plus a launcher for SuperLink and SuperNodes."""
