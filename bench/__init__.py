"""kubestream's benchmarks (``python -m bench.pipeline`` from the repository root); not shipped."""
