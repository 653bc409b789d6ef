"""The sans-IO connection core: one object per client connection that owns its state and turns events (bytes
arrived, cpu job finished, time passed, peer closed) into actions (send, start a cpu job, pause/resume reading,
close). No sockets, asyncio or threads inside.
"""
