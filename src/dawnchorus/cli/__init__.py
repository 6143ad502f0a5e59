"""The ``dawnchorus`` command line: parses, calls the package, prints. No logic of its own."""
