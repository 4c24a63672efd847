"""attention methods (one file each)."""
