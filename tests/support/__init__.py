"""Helpers the tests use to prepare local assets, such as model folders built offline."""
