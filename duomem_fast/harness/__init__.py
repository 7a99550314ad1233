"""Teacher comparison harness: agents behind one interface, parallel resumable runs, metrics, reports."""
