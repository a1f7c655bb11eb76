"""Test workflows for invoke, wait_for_event, parallel steps, cancellation and failure handlers."""
