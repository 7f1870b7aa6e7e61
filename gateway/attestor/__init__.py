"""The attestor: verifies every device's batches (spec section 9), keeps each device's chain in a
store shared by its workers, scores each device per epoch and publishes signed attestations
(spec section 6)."""
