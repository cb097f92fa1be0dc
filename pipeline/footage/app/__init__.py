"""The local web app over a gallery store (FastAPI + uvicorn): ``python cli.py serve``."""
from .server import create_app

__all__ = ["create_app"]
