"""Layer 7: what every run stands on: mesh and sharding, train state, optimizer and
parameter groups, orbax checkpoints and restore, INIT parameters, metric writers,
multi-host start-up."""
