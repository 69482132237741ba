"""Tests of the contract package agent.protocol: pure, table-style, no I/O."""
