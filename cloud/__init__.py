"""Cloud endpoint: MQTT request workers, device PKI, policy store, CLI."""
