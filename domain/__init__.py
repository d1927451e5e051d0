"""Entities, value objects and errors of the chat-bound sandbox service (standard library only)."""
