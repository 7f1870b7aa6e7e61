"""What every other part stands on: errors, units, fields, files, readings, counters and the
plug-in registry. Imports nothing of ours; `drivers` may import it and nothing else of gateway."""
