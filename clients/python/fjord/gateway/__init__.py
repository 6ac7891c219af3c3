"""Generated gRPC/protobuf code of ``fjord.gateway`` (proto/fjord/gateway/)."""
