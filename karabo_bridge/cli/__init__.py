"""Command line tools: karabo-bridge-glimpse, -monitor, -server-sim."""

__all__: list = []
