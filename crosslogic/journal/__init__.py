"""The admission journal: what ext_authz admitted, kept until billing has the usage row."""
