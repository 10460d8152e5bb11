"""MAESTRO's layout: its folder, its csv and columns, and its splits, which every data folder follows."""

MAESTRO_DIR = "maestro-v3.0.0"
CSV_NAME = "maestro-v3.0.0.csv"
COLUMNS = ["canonical_composer", "canonical_title", "split", "year", "midi_filename", "audio_filename", "duration"]
SPLITS = ("train", "validation", "test")
