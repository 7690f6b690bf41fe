"""The datasets between stages: synthetic reviews, the tokenizer, tokenized examples and their digest."""
