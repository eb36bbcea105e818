"""Storage: Redis connections and the embedded server, the SQL engine, tables, migrations, demo
data."""
