"""API keys: format, scopes, storage, the cached verifier, revocation broadcast and the /api/keys endpoints."""
