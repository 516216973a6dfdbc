"""`metaserve serve`: an adapt-on-request few-shot service on Ray Serve (app.py), its request schema
and limits (schema.py), request batching (batching.py) and a small HTTP client (client.py)."""
