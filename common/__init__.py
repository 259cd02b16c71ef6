"""Shared runtime: config, distributed helpers, checkpoints, FLOP ledger, optimizers, logging."""
