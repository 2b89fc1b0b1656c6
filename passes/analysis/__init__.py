"""Read-only analyses of a model (MACs, parameters) shared by inspect, reports and pruning."""
