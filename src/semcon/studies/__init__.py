"""The experiment harness and its reports: compare, ablate, replay and verify, inspect, validate, export,
the statistics and every table and figure."""
