"""Seed 000's MediBot as a minimal Django project: settings, URLs and the chat view (see ../demo.py)."""
