"""The base every service shares: logging, topics, the Kafka wake-up, CLI options, the health server.

Imports only ``schemas`` and third-party packages (README, "Dependency rule").
"""
