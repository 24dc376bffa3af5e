"""The coordinator: registry, operations service, dispatcher, cancel responder, status API.

It never runs work. Everything it knows lives in JetStream, so it can be killed and restarted
at any time.
"""
