"""CDS Hooks 2.0 service of the hub (mounted on the hub's HTTP app): discovery, hook
handlers that answer with cards, feedback, and JWT verification of every request.

Not built yet: see the project's open issues.
"""
