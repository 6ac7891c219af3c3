"""Generated gRPC/protobuf code of ``fjord.forwarder`` (proto/fjord/forwarder/)."""
