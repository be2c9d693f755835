"""The data planes between actors: password-protected ZMQ sockets and their message channels."""
