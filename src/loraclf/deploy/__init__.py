"""Deployment: artifacts, prediction, export (hf, ONNX) and the HTTP server."""
