"""cache methods (one file each)."""
