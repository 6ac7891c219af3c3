"""Generated from proto/fjord/gateway/v1/gateway.proto by clients/python/generate.sh; do not edit."""
