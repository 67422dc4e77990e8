"""One page in, text out: the model's two halves and what turns a task into a prompt and ids into text.

    prompt.py      task names and their prompt texts; the image placeholder
    tokenizer.py   PromptTokenizer: the checkpoint's own tokenizer and chat template -> prompt ids around the image
    vision.py      page image -> smart_resize, patches -> image embeddings (PyTorch)
    compact.py     linear layers with int8/bf16 weights widened per call (the vision tower's memory saver)
    llama.py       TextDecoder: the llama.cpp binding (model, context, batches, M-RoPE prefill, one decode step)
    generate.py    DecodeRequest -> Generation: sampling, token probabilities, repetition guard, pages together
    confidence.py  token probabilities -> a text's confidence and least token probability
    detokenize.py  generated ids -> text, incrementally and safe to stream (stop strings, split UTF-8)
    recognizer.py  Recognizer: a bundle loaded once; the library API over the modules above
    answers.py     questions about pages (task or free prompt) -> answers: shared by `serve` and `ask`

Nothing is re-exported here, so that importing `engine.prompt` imports neither torch nor llama.cpp.
"""
