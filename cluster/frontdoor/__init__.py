"""The front door: the gRPC server, the API behind every door, auth, request checks, metrics,
and the coordinator that routes requests to target replicas."""
