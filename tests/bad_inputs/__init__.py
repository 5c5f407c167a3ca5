"""Generated bad-input corpora, one module per adapter family (each file is built by a fixture)."""
