"""The gateway process along one reading's way: sampler, judge, commit buffer (group commit),
spool and seal, uplink; beside it what owners watch and what changes the modules; and the
daemon that composes them (`service.py` says how)."""
