"""The DuckDB warehouse: the connection, the table names, the DDL and read-only summaries."""
