"""PostgreSQL: connection settings and schema migrations."""
