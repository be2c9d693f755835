"""Deployment: the Ray Serve application (gRPC ingress and OpenAI-compatible HTTP) and the
configs and KubeRay manifests around it."""
