"""Reports: pure functions from records to markdown (and, later, HTML and figures)."""
