"""The hub's benchmark (``hub bench``): throughput, latency and memory on a real broker; see bench.run."""
