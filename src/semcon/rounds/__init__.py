"""The round loop every method and transport shares, and what it keeps: the run folder, the metrics, the
trackers and the energy meter."""
