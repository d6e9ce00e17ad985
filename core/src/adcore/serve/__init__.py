"""``adcore serve``: an HTTP inference service for checkpoints and exported models.

* :mod:`adcore.serve.models` loads what is served (a checkpoint through the full framework,
  an ONNX/OpenVINO export through :mod:`adcore_runtime`) and decodes uploaded images exactly
  as the dataset decodes files;
* :mod:`adcore.serve.app` is the ASGI application (Starlette): ``/health``, ``/models``,
  ``/predict``, a bounded queue in front of a pool of inference threads (503 when full), and
  :func:`~adcore.serve.app.run_server`, which runs it under uvicorn and on SIGTERM stops
  accepting, finishes the requests in flight, then exits.

Starlette and uvicorn are the optional extra ``serve``: ``pip install "adcore[serve]"``.
Nothing here is imported by ``import adcore``.
"""
