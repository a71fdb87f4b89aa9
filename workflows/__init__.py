"""Orchestration: one scene, pairs, batches, the Dask client and the CLI. Job files users copy live here."""
