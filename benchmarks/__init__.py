"""edgerec.benchmarks: latency/throughput/memory harness, baselines and reports."""
