"""The control plane: placing pools on Ray resources and bringing a deployment up."""
