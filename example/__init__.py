"""The example project's app: the demo workflows and the ``demo`` command (not packaged)."""
