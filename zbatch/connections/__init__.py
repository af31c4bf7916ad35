"""Connections know how to reach a host: run an argument list, write and read files."""
