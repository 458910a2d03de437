"""The gate (pure), applying its decision, rollback, forced promotion, the ledger
and the champion's status."""
