"""The Click command line: thin commands over the library."""
