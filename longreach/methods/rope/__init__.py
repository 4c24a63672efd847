"""rope methods (one file each)."""
