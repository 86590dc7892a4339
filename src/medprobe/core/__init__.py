"""The bottom layer: errors, names, file writes and digests, cost clocks and default locations. Imports nothing of medprobe."""
