"""Traffic replay for audits: report, what-if, re-run and trace over the recorded topics.

Everything the gateway did is in Kafka: the requests (``<prefix>.requests.<priority>``),
their terminal responses (``<prefix>.responses``), usage events (``<prefix>.usage``), dead
letters and the redrive ledger. This package reads them back for a time range and

- ``report``   joins them by request id into an audit report (recording.py, report.py,
               render.py, charts.py);
- ``whatif``   drives the recorded requests through the live admission, cache and pricing
               policies under another configuration, without calling a provider (whatif.py);
- ``run``      re-publishes them into an isolated namespace and diffs the new answers
               against the recorded ones (rerun.py: pure; run.py: processes and I/O);
- ``trace``    shows the whole life of one request (trace.py).

Kafka I/O lives in reader.py (seek by timestamp with ``offsets_for_times``, read in batches
up to the end offsets captured at start); the rest is pure and unit-tested.
"""
