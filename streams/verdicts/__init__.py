"""Promotion verdicts: an anytime-valid confidence sequence on the paired loss difference.

Pure logic (no Kafka, no faust), one idea per module: :mod:`~streams.verdicts.confseq` is
the statistic, :mod:`~streams.verdicts.decide` turns it and the guardrails into a decision,
:mod:`~streams.verdicts.ledger` keeps each (candidate, primary) comparison and gives the
records a window close publishes, :mod:`~streams.verdicts.simulation` measures how often
and how soon the verdict decides. ``docs/verdicts.md`` explains the method.
"""
