"""Server-wide limits: the named constants with the reasons for their numbers (constants), and the resource
rules that apply them (resources: descriptor sizing, deadlines, limit closes). Per-connection limits are enforced in
the connection core (server.connection.core), once, for both front ends.
"""
