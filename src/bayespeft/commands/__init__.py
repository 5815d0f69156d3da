"""The command line's sub-commands: one module each, holding its parser and the call into the Python API."""
