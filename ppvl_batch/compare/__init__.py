"""llama.cpp's own vision path, to compare ours against: tests and bench only, never a page's answer.

    mtmd.py    libmtmd over a bundle's mmproj GGUF: its preprocessing, its vision encoder, its prompt chunks

The mmproj GGUF it reads is written by ppvl_batch/convert/mmproj.py (`convert --mmproj`).

Nothing below the command line imports this package.
"""
