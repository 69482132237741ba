"""The car ↔ cloud contract (version 1): a leaf package.

Imports only the standard library and cryptography (strict bodies are checked by the
small ``strict`` kit, not pydantic), so that the cloud and the simulator can import it
without pulling in the agent, and the gateway pays for no validation framework.
"""
