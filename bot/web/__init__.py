"""The gateway port: the owner's web chat and dashboard, and an OpenAI-compatible endpoint,
served by one small aiohttp server inside the service."""
