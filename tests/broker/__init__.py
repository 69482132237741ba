"""Tests against a real Mosquitto started from broker-config/ with mTLS and the real ACL."""
