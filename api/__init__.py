"""fakesake's HTTP API: backends and tenants submit jobs and read results over HTTP (``fakesake api``).

Torch-free: it runs on the base install plus the ``api`` extra. Pure parts (API keys, request models, error
mapping, pagination cursors) are apart from the FastAPI adapter (:mod:`api.app`) and the uvicorn runner
(:mod:`api.server`). Importing ``api`` imports neither FastAPI nor uvicorn.
"""
