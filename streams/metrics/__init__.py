"""Mergeable statistics, sketches, drift and verdicts: pure numpy, no Kafka.

One idea per module, each following river's small protocol (``update``, ``merge`` where
it makes sense, ``get``) and tested against a reference implementation.
"""
