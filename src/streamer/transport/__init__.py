"""Transports (WebSocket, gRPC) that adapt sockets to the core."""
