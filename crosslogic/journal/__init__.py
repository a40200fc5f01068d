"""The admission journal: what ext_authz admitted, kept until billing has the usage row.

Its Redis layout and record format are a contract: crosslogic/contracts/journal.py.
"""
