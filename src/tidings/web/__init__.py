"""The HTTP listener: client autoconfiguration, the MTA-STS policy, /metrics and /healthz.

``app`` builds the aiohttp application and its runner; each concern has its own module with
its pure parts (XML, plist and policy builders, tested on their own) beside its handlers.
"""
