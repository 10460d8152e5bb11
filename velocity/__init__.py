"""velocity: learn how pianists shape dynamics, and humanize MIDI files with it."""
