"""The ``ktrdr`` command line."""
