"""The gRPC surface: servicers, protobuf conversion, auth, TLS, tracing, metrics and watches.
May import loadwarden.policy, server.engine, the generated loadwarden.v1 code and grpc."""
