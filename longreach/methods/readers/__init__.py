"""readers methods (one file each)."""
