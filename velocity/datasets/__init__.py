"""The corpora: the generated demo corpus, MAESTRO and ASAP."""
