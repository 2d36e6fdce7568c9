"""Alerts: receivers from `.env`, Alertmanager's generated configuration, and what fires."""
