"""Statistics on records (numpy/scipy): intervals, paired tests, variance studies."""
