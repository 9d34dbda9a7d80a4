"""Simulated backends, traffic generator and evaluation framework.

Not built yet: this package holds the namespace slot that the simulator issue
fills (``loadwarden backend-sim``, ``loadwarden evaluate``). It exports nothing.
"""

__all__: list[str] = []
