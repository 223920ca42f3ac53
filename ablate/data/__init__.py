"""What is scored: eval documents and multiple-choice task items, read and tokenized once."""
