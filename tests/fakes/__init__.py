"""Local fake servers that stand in for chat platforms and model backends in tests."""
