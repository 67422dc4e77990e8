"""llama.cpp's own vision path, to compare ours against: tests and bench only, never a page's answer.

    mtmd.py    libmtmd over a bundle's mmproj GGUF: its preprocessing, its vision encoder, its prompt chunks
    mmproj.py  our vision tower written as llama.cpp's mmproj GGUF (`convert --mmproj`)

Nothing below the command line imports this package.
"""
