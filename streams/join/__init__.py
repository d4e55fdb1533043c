"""The parts of the joiner's per-partition state, one idea each, no Kafka.

* :mod:`~streams.join.clock`: event-time watermarks per input stream, idleness.
* :mod:`~streams.join.table`: pending joins by request_id, and the ids already finished
  (so a duplicate is recognised whenever it arrives within the age bound).
* :mod:`~streams.join.windows`: the open window accumulators and how they close.
* :mod:`~streams.join.ledger`: the conservation ledger (every request accounted for).
* :mod:`~streams.join.labels`: where each label goes (an open join, the answers kept after
  one in :mod:`~streams.join.awaiting`, a new join) and what it is counted.
* :mod:`~streams.join.timecheck`: which event times are believable.

:class:`streams.joinstate.PartitionState` drives them event by event and writes their
changes to the changelog.
"""
