"""llama.cpp's own vision path, to compare ours against: tests and bench only, never a page's answer.

    mtmd.py   libmtmd over a bundle's mmproj GGUF: its preprocessing, its vision encoder, its prompt chunks

Nothing in the package imports this one (except `convert --mmproj`, which writes that GGUF).
"""
