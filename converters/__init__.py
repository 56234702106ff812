"""Model conversions: each module runs alone (`python -m converters.<name>`)."""
