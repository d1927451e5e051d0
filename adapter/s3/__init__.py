"""Shared artifact store (L3) on S3."""
