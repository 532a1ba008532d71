"""Work-arounds for version quirks of the host libraries, each named and tested in one place."""
