"""The gateway process along one reading's way: sampler, pipeline (group commit), spool,
uplink, and the daemon that composes them."""
