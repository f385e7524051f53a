"""Data assets: corpus, curation, eval sets, instruction and preference data, seeds and feedback."""
