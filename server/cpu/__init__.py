"""cpu execution: the process pool and Dask backends (chosen by name, server.cpu.backends), the worker-side
code that runs inside a worker (server.cpu.worker), and the cpu-job policy every front end uses (server.cpu.jobs:
backlog bound, -BUSY, timeouts, worker deaths).
"""
