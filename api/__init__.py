"""FastAPI application for staff and phones."""
