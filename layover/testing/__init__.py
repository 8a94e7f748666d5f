"""Test fixtures that build and push realistic registry content (no Prefect, no pipeline code)."""
