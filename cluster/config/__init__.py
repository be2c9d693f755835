"""The deployment config: one typed, validated object from one YAML (CLI, Ray Serve, KubeRay)."""
