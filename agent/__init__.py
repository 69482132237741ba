"""In-vehicle agent: identity, signed MQTT sync, local store, CLI."""
