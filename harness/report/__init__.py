"""Reports: pure functions from records to markdown, a self-contained HTML page and figures."""
