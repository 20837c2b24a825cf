"""Northbound sinks and their contract (:mod:`agent.sinks.base`)."""
