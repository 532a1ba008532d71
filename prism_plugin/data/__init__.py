"""Data: the PRISM prompts, dataset schemas and converters between the toolkits' formats."""
