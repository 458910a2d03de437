"""The gate (pure), applying its decision, rollback, forced promotion and the ledger."""
