"""isaac-data: make, check and inspect Isaac training shards."""
