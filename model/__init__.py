"""headsweep's model package: a gated encoder–decoder Transformer and its plain (Ray-free) training loop."""
