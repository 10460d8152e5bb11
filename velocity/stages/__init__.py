"""One module per DVC stage: a pure function that does the work and a thin `main()` for I/O."""
