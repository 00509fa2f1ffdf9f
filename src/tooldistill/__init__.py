"""tooldistill: teach a self-hosted model to call tools the way Claude does."""

__version__ = "0.1.0"
