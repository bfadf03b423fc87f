"""Workflows: state changes with their audit events and the mail they cause."""
