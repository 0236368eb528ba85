"""Prompts in: the ingest server (`server`) with its admission limits, item checks and uvicorn
set-up, the capture proxy in front of a production model, and prompt files (`inputs`)."""
