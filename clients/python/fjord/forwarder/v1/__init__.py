"""Generated from proto/fjord/forwarder/v1/forwarder.proto; regenerate with
``python -m grpc_tools.protoc -I proto --python_out=clients/python --grpc_python_out=clients/python
--pyi_out=clients/python proto/fjord/forwarder/v1/forwarder.proto`` (grpcio-tools 1.85.1)."""
