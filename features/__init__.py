"""Per-transaction features: pure `(state, event) -> (state, features)` logic, no I/O."""
