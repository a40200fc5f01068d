"""Helpers the test modules share, one module per concept; fixtures live in ``conftest.py``.

No test module imports from another test module or from ``conftest``: what two of them need
is here.
"""
