"""The OpenAI-compatible HTTP ingress (``sluicegate ingress``): see app.py for the design.

app.py   the aiohttp server and its Kafka bridge (a separate, stateless process)
auth.py  API keys against SHA-256 digests, priority caps (pure)
wire.py  OpenAI JSON <-> ChatRequest/ChatResponse records, outcomes -> HTTP (pure)
cli.py   registers the ``ingress`` subcommand
"""
