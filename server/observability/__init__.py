"""Observability: INFO's sections, the Prometheus endpoint, the container healthcheck and reuseport instance
fields. Reads the store and the cpu policy's counters; the request path pays nothing for it.
"""
