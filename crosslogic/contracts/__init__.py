"""What two processes (or a process and Envoy's config) must agree on, each in one module.

Nothing here does I/O: these are names, layouts and the pure functions that build them, so a
writer and its reader import the same definition, and ``tests/test_contracts.py`` checks the
Envoy templates against them.
"""
