"""The web dashboard served by the status API: its page, live feed and views (``routes``)."""
