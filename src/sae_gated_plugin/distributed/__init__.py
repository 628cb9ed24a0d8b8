"""torchrun: the process-group context, rank-disjoint data shards, the data-parallel and
latent-sharded trainers, and one rank's training run."""
