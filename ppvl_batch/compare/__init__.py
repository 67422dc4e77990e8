"""llama.cpp's own vision path, for tests and benchmarks only."""
