"""Replays logged routing outcomes through the same policy objects the service serves."""
