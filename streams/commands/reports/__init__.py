"""What the commands show about a run: `status`, the report (summary, figures, charts, HTML)."""
