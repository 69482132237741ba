"""Simulator: many real agents in one process, the broker harness, the demo and benchmarks."""
