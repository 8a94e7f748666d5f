"""Layover's benchmark harness: fixture, baselines, measurement, report. See bench/README.md."""
