"""How roles run: the topology (which roles in which processes), model hosts, the supervisor
that keeps them running, and the HTTP serving entry points."""
