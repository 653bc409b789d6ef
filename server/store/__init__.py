"""The store: server-wide state the commands read and write (keyspace, client table, counters, command
statistics, slow log). No I/O and no knowledge of connections or front ends.
"""
