"""The car ↔ cloud contract (version 1): a leaf package.

Imports only the standard library, pydantic and cryptography, so that the
cloud and the simulator can import it without pulling in the agent.
"""
